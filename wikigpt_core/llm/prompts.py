"""The teacher's and judge's request prompts, and parsing of their JSON replies.

Every request is an ordinary chat message an instruction model can follow. It starts with a
`### task: <kind>` line and carries its inputs in named, fenced sections:

    [Passage]
    <<<
    ...
    >>>

The same text goes to either backend: an LLM reads it as instructions, the offline backend
reads the sections back with `parse_request`. Replies are one JSON object with the fields of
`REPLY_FIELDS`; `reply_schema` turns those into a JSON schema an endpoint can constrain its
decoding to (vLLM's guided decoding, llama.cpp's grammars, OpenAI structured outputs).
"""
from __future__ import annotations

import json
import re
from typing import Any

OPEN, CLOSE = "<<<", ">>>"
_TASK_LINE = re.compile(r"^### task: (\w+)", re.M)
_SECTION = re.compile(r"^\[([A-Za-z ]+)\]\n" + re.escape(OPEN) + r"\n(.*?)\n" + re.escape(CLOSE) + r"$",
                      re.S | re.M)

EXAMPLE_INSTRUCTIONS = {
    "qa": (
        "Write one question that the passage answers, with a short exact answer copied from the "
        "passage (a name, year, number or short phrase of at most 10 words). Ask about a "
        "different fact for each variant number. Reply with only a JSON object: "
        '{"question": str, "answer": str, "response": str} where response is the answer as '
        "the assistant would say it (short, no preamble)."
    ),
    "summarize": (
        "Follow the instruction below for the passage. Use only facts stated in the passage, in "
        'at most 60 words. Reply with only a JSON object: {"response": str}.'
    ),
    "extract": (
        "Follow the extraction instruction below for the passage. Copy items exactly as they "
        "appear in the passage; if there are none, return an empty list. Reply with only a JSON "
        'object: {"items": [str], "response": str} where response lists the items, comma-separated.'
    ),
}

JUDGE_INSTRUCTION = (
    "You are an impartial judge comparing two assistant responses to the same user message. "
    "Prefer responses that are correct and grounded in any passage given, answer what was "
    "asked, match the reference answer when one is given, stop when done (a response marked "
    "[cut off] never finished), are concise and do not repeat themselves. If the question "
    "rests on a false premise, prefer the response that says so. Ignore the order in which the "
    'responses appear. Reply with only a JSON object: {"score_a": int, "score_b": int}, '
    "each from 1 (useless) to 10 (ideal)."
)

FALSE_PREMISE_INSTRUCTION = (
    "The question below rests on a false premise (the reason is given). Write two replies: "
    "`refusal`, a short, polite reply that does not answer as asked but points out the false "
    "premise and, if useful, states the true fact; and `invented`, a confident reply that "
    "wrongly accepts the premise and makes up an answer (a negative example for training). "
    'Reply with only a JSON object: {"refusal": str, "invented": str}.'
)


REPLY_FIELDS: dict[str, dict[str, type]] = {
    "qa": {"question": str, "answer": str, "response": str},
    "summarize": {"response": str},
    "extract": {"items": list, "response": str},
    "judge": {"score_a": float, "score_b": float},
    "false_premise": {"refusal": str, "invented": str},
}
"""The JSON object each request kind must be answered with: field name -> Python type."""

MAX_ITEMS = 12


def reply_schema(kind: str, max_chars: int = 1_200) -> dict[str, Any]:
    """JSON schema of the reply to a `kind` request: scores are integers 1-10 (as the judge is
    told), every string 1 to `max_chars` characters, lists at most MAX_ITEMS items."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    types = {str: text, float: {"type": "integer", "minimum": 1, "maximum": 10},
             list: {"type": "array", "items": text, "maxItems": MAX_ITEMS}}
    fields = REPLY_FIELDS[kind]
    return {"type": "object", "properties": {k: types[t] for k, t in fields.items()},
            "required": list(fields), "additionalProperties": False}


class ReplyFormatError(ValueError):
    """A teacher/judge reply that is not the JSON object the request asked for."""


def _fence(text: str) -> str:
    # Keep the fences unambiguous: content can never close its own section.
    return text.replace(OPEN, "< < <").replace(CLOSE, "> > >").strip()


def render_request(kind: str, instruction: str, sections: dict[str, str]) -> str:
    parts = [f"### task: {kind}", instruction]
    for name, body in sections.items():
        parts.append(f"[{name}]\n{OPEN}\n{_fence(body)}\n{CLOSE}")
    return "\n\n".join(parts)


def parse_request(text: str) -> tuple[str, dict[str, str]]:
    """Inverse of `render_request`: (kind, {section name: body})."""
    m = _TASK_LINE.search(text)
    if not m:
        raise ReplyFormatError("request has no '### task:' line")
    return m.group(1), {name: body for name, body in _SECTION.findall(text)}


def example_request(task: str, title: str, passage: str, variant: int, instruction: str = "") -> str:
    sections = {"Title": title, "Passage": passage, "Variant": str(variant)}
    if instruction:
        sections["Instruction"] = instruction
    return render_request(task, EXAMPLE_INSTRUCTIONS[task], sections)


def judge_request(question: str, response_a: str, response_b: str, reference: str = "") -> str:
    sections = {"Question": question}
    if reference:
        sections["Reference answer"] = reference
    sections["Response A"] = response_a
    sections["Response B"] = response_b
    return render_request("judge", JUDGE_INSTRUCTION, sections)


def false_premise_request(question: str, reason: str, context: str = "") -> str:
    sections = {"Question": question, "Why the premise is false": reason}
    if context:
        sections["Context"] = context
    return render_request("false_premise", FALSE_PREMISE_INSTRUCTION, sections)


def parse_json_reply(text: str, required: dict[str, type]) -> dict[str, Any]:
    """The first JSON object in `text` (models sometimes wrap it in prose or ``` fences),
    checked to have the `required` keys with the given types."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            break
        start = text.find("{", start + 1)
    else:
        raise ReplyFormatError(f"no JSON object in reply: {text[:120]!r}")
    for key, typ in required.items():
        if key not in obj:
            raise ReplyFormatError(f"reply lacks {key!r}: {text[:120]!r}")
        if typ is float and isinstance(obj[key], (int, float, str)) and not isinstance(obj[key], bool):
            try:  # models sometimes quote numbers: "8"
                obj[key] = float(obj[key])
            except ValueError:
                raise ReplyFormatError(f"reply field {key!r} is not a number: {text[:120]!r}") from None
        elif not isinstance(obj[key], typ):
            raise ReplyFormatError(f"reply field {key!r} is not {typ.__name__}: {text[:120]!r}")
    return obj

"""The chat format and SFT labels of SPEC §3.

Template, per turn, no system prompt and no newlines around specials:
    <|user|>{content}<|end|><|assistant|>{content}<|end|>
A generation prompt ends with <|assistant|>. Labels align with ids (the loss shifts them):
user turns (their <|user|> and <|end|> included) and every <|assistant|> token are -100;
assistant content and the assistant's closing <|end|> are trained, which teaches stopping.
"""
from __future__ import annotations

from typing import Any

from wikigpt_core.tokenizer import ASSISTANT, END, USER, WikiTokenizer

IGNORE_INDEX = -100
ROLES = ("user", "assistant")

# The same template in Jinja, for Hugging Face `apply_chat_template` (shipped in the release).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}" + END +
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END +
    "{% else %}{{ raise_exception('roles must be user or assistant') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


class ChatFormatError(ValueError):
    """A conversation that does not fit the template (bad role, order or content)."""


def validate_messages(messages: Any, *, for_generation: bool) -> list[dict[str, str]]:
    """Check roles alternate user/assistant starting with user; a generation prompt must end
    with a user turn, a training example with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ChatFormatError(f"messages[{i}] must be an object with exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"messages[{i}].role is {m['role']!r}; only 'user' and 'assistant' are allowed")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"messages[{i}].content must be a string")
        expected = ROLES[i % 2]
        if m["role"] != expected:
            raise ChatFormatError(f"messages[{i}].role is {m['role']!r} but turns must alternate, starting with 'user'")
    last = messages[-1]["role"]
    if for_generation and last != "user":
        raise ChatFormatError("the last message must be from the user")
    if not for_generation and last != "assistant":
        raise ChatFormatError("a training example must end with an assistant message")
    return messages


def render_prompt(messages: list[dict[str, str]], tok: WikiTokenizer) -> list[int]:
    """Ids of a conversation ending in a user turn, followed by <|assistant|>."""
    validate_messages(messages, for_generation=True)
    ids, _ = _render(messages, tok)
    return ids + [tok.assistant_id]


def render_example(messages: list[dict[str, str]], tok: WikiTokenizer) -> tuple[list[int], list[int]]:
    """(ids, labels) of a training conversation ending in an assistant turn."""
    validate_messages(messages, for_generation=False)
    return _render(messages, tok)


def _render(messages: list[dict[str, str]], tok: WikiTokenizer) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        content = tok.encode(m["content"])
        if m["role"] == "user":
            turn = [tok.user_id, *content, tok.end_id]
            ids += turn
            labels += [IGNORE_INDEX] * len(turn)
        else:
            ids += [tok.assistant_id, *content, tok.end_id]
            labels += [IGNORE_INDEX, *content, tok.end_id]
    return ids, labels

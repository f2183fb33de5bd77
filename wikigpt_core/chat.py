"""The chat format and SFT labels (docs/reference.md, "Chat format").

Template, per turn, no newlines around specials:
    <|user|>{content}<|end|><|assistant|>{content}<|end|>
A generation prompt ends with <|assistant|>. The model has no system role: a leading `system`
message is folded into the first user turn as "{system}\n\n{user}" (an empty one is dropped),
here and in the Jinja template the release ships, so the core, transformers'
`apply_chat_template` and vLLM (which renders with that template) produce the same ids.
Labels align with ids (the loss shifts them):
user turns (their <|user|> and <|end|> included) and every <|assistant|> token are -100;
assistant content and the assistant's closing <|end|> are trained, which teaches stopping.
"""
from __future__ import annotations

from typing import Any

from wikigpt_core.tokenizer import ASSISTANT, END, USER, WikiTokenizer

IGNORE_INDEX = -100
ROLES = ("user", "assistant")
SYSTEM_SEPARATOR = "\n\n"
"""Between a folded system message and the first user message."""

# The same template in Jinja, for Hugging Face `apply_chat_template` (shipped in the release).
# Plain text never follows a block tag: transformers renders with trim_blocks, which would eat
# a newline there, so the separator is an expression.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% if not turns %}{{ raise_exception('a system message must be followed by a user message') }}{% endif %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}" + USER +
    "{% if loop.first and system %}{{ system + '\n\n' }}{% endif %}{{ message['content'] }}" + END +
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END +
    "{% else %}{{ raise_exception('roles must be user or assistant (system only first)') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


class ChatFormatError(ValueError):
    """A conversation that does not fit the template (bad role, order or content)."""


def fold_system(messages: Any) -> Any:
    """A leading system message merged into the first user message (see the module doc)."""
    if not (isinstance(messages, list) and messages and isinstance(messages[0], dict)
            and messages[0].get("role") == "system"):
        return messages
    system = messages[0].get("content")
    if not isinstance(system, str):
        raise ChatFormatError("messages[0].content (system) must be a string")
    rest = messages[1:]
    if not rest or not isinstance(rest[0], dict) or rest[0].get("role") != "user":
        raise ChatFormatError("a system message must be followed by a user message")
    if not system or not isinstance(rest[0].get("content"), str):
        return rest
    return [{**rest[0], "content": system + SYSTEM_SEPARATOR + rest[0]["content"]}, *rest[1:]]


def validate_messages(messages: Any, *, for_generation: bool) -> list[dict[str, str]]:
    """Fold a leading system message into the first user turn, then check roles alternate
    user/assistant starting with user; a generation prompt must end with a user turn, a
    training example with an assistant turn. Returns the (folded) messages."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {role, content} objects")
    messages = fold_system(messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ChatFormatError(f"messages[{i}] must be an object with exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"messages[{i}].role is {m['role']!r}; only 'user' and 'assistant' "
                                  "are allowed (and 'system' as the first message)")
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
    messages = validate_messages(messages, for_generation=True)
    ids, _ = _render(messages, tok)
    return ids + [tok.assistant_id]


def render_example(messages: list[dict[str, str]], tok: WikiTokenizer) -> tuple[list[int], list[int]]:
    """(ids, labels) of a training conversation ending in an assistant turn."""
    messages = validate_messages(messages, for_generation=False)
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

"""What every caller of the model agrees on: the stop tokens and the one prompt-cropping rule.

Stop tokens: <|end|> (a finished assistant turn) and <|endoftext|> (a finished document).
Generation ends when either is produced; it is counted as a generated token but is never text.

Cropping: a prompt plus its reply must fit the context. The prompt may use
`block_size - max_new_tokens` tokens, but never less than a quarter of the context (so a huge
`max_new_tokens` cannot squeeze the question out; the reply then ends early with "length" when
the context is full). A conversation that is too long first loses its oldest whole exchanges
(so the model still sees well-formed turns); a system message is never lost: it is folded into
the first user turn that remains. If the last user turn alone is still too long, its oldest
content tokens go (the system text's stay), keeping the leading <|user|> so the prompt still
opens a turn and still ends with the question and <|assistant|>. A system text that alone does
not fit is refused (ChatFormatError), never cut.
"""
from __future__ import annotations

from wikigpt_core.chat import (SYSTEM_SEPARATOR, ChatFormatError, fold_system, render_prompt,
                               validate_messages)
from wikigpt_core.tokenizer import DOC_SEP, END, SPECIAL_TOKENS, WikiTokenizer

STOP_TOKENS = (END, DOC_SEP)
# The tokenizer pins the specials to ids 0..3, so the ids are known even without one loaded.
STOP_IDS = frozenset(SPECIAL_TOKENS.index(t) for t in STOP_TOKENS)


def stop_ids(tok: WikiTokenizer | None = None) -> frozenset[int]:
    """The token ids that end a generation."""
    if tok is not None:
        assert frozenset((tok.end_id, tok.doc_id)) == STOP_IDS
    return STOP_IDS


def prompt_budget(block_size: int, max_new_tokens: int) -> int:
    """Prompt tokens allowed for a reply of `max_new_tokens` (see the module docstring)."""
    return max(block_size - max_new_tokens, block_size // 4, 1)


def crop_ids(ids: list[int], budget: int) -> list[int]:
    """Keep the first token (a turn or document marker) and the last `budget - 1` tokens."""
    if len(ids) <= budget:
        return ids
    return ids[:1] + ids[len(ids) - budget + 1:] if budget > 1 else ids[-1:]


def crop_conversation(messages: list[dict[str, str]], tok: WikiTokenizer, budget: int
                      ) -> tuple[list[int], int]:
    """Render a conversation (ending in a user turn) into at most `budget` ids by the rule
    above. Returns (ids, tokens cropped)."""
    validate_messages(messages, for_generation=True)  # the checks, with their messages
    system, turns = split_system(messages)
    # Each turn renders as <|role|> content <|end|>, plus one final <|assistant|>: count tokens
    # per turn once, then render only the suffix that fits. The first kept turn carries the system text.
    sizes = [len(ids) + 2 for ids in tok.encode_batch([m["content"] for m in turns])]
    total = _kept_size(tok, system, turns, sizes, 0)
    start, kept = 0, total
    while kept > budget and start + 2 < len(turns):
        start += 2  # drop the oldest user/assistant exchange
        kept = _kept_size(tok, system, turns, sizes, start)
    kept_turns = fold_system([{"role": "system", "content": system}, *turns[start:]]) if system \
        else turns[start:]
    ids = render_prompt(kept_turns, tok)
    assert len(ids) == kept, "turn sizes disagree with the chat template"
    if len(ids) > budget:
        ids = _crop_last_turn(ids, tok, kept_turns[0]["content"], len(system), budget)
    return ids, total - len(ids)


def split_system(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """(system text or "", the user/assistant turns) of a validated conversation."""
    if messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return "", list(messages)


def _kept_size(tok: WikiTokenizer, system: str, turns: list[dict[str, str]], sizes: list[int],
               start: int) -> int:
    """Prompt tokens of turns[start:] with the system text folded into the first of them."""
    first = sizes[start]
    if system:
        first = len(tok.encode(system + SYSTEM_SEPARATOR + turns[start]["content"])) + 2
    return first + sum(sizes[start + 1:]) + 1


def _crop_last_turn(ids: list[int], tok: WikiTokenizer, content: str, system_chars: int,
                    budget: int) -> list[int]:
    """A single user turn cut to `budget` ids: its leading <|user|> and the tokens that carry
    the system text stay, its oldest other content tokens go."""
    if not system_chars:
        return crop_ids(ids, budget)
    spans = tok.encode_offsets(content)
    # Tokens up to the one that holds the separator's last character carry the system text.
    sep_end = system_chars + len(SYSTEM_SEPARATOR)
    keep = 1 + next(i + 1 for i, (_, end) in enumerate(spans) if end >= sep_end)
    room = budget - keep
    if room < 2:  # at least <|end|><|assistant|> (the question itself may be cut to nothing)
        raise ChatFormatError(
            f"the system message takes {keep - 1} tokens; with the turn markers it does not fit "
            f"the {budget}-token prompt budget; shorten it (or lower max_new_tokens)")
    return ids[:keep] + ids[len(ids) - room:]

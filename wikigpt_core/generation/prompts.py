"""What every caller of the model agrees on: the stop tokens and the one prompt-cropping rule.

Stop tokens: <|end|> (a finished assistant turn) and <|endoftext|> (a finished document).
Generation ends when either is produced; it is counted as a generated token but is never text.

Cropping: a prompt plus its reply must fit the context. The prompt may use
`block_size - max_new_tokens` tokens, but never less than a quarter of the context (so a huge
`max_new_tokens` cannot squeeze the question out; the reply then ends early with "length" when
the context is full). A conversation that is too long first loses its oldest whole exchanges
(so the model still sees well-formed turns); if the last user turn alone is still too long,
its oldest content tokens go, keeping the leading <|user|> so the prompt still opens a turn
and still ends with the question and <|assistant|>.
"""
from __future__ import annotations

from wikigpt_core.chat import render_prompt, validate_messages
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
    messages = validate_messages(messages, for_generation=True)  # also folds a system message
    # Each turn renders as <|role|> content <|end|>, plus one final <|assistant|>: count tokens
    # per turn once, then render only the suffix that fits.
    sizes = [len(ids) + 2 for ids in tok.encode_batch([m["content"] for m in messages])]
    total = sum(sizes) + 1
    start, kept = 0, total
    while kept > budget and start + 2 < len(messages):
        kept -= sizes[start] + sizes[start + 1]  # drop the oldest user/assistant exchange
        start += 2
    ids = render_prompt(messages[start:], tok)
    assert len(ids) == kept, "turn sizes disagree with the chat template"
    ids = crop_ids(ids, budget)
    return ids, total - len(ids)

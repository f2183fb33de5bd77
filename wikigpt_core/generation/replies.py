"""Chat replies for batch jobs (evaluation, preference sampling): several seeded samples per
conversation, all decoded together."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from wikigpt_core.generation.batch import SamplingParams


def pick_device() -> str:
    """CUDA when there is a GPU (the eval box), else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Reply:
    text: str
    stopped: bool
    """The model produced a stop token (<|end|>) within the new-token budget."""
    new_tokens: int


def sample_seed(seed: int, conversation: int, sample: int) -> int:
    """Each reply's own generator seed, so a reply does not depend on which others ran."""
    return (seed * 1_000_003 + conversation) * 1_009 + sample


def generate_replies(model, tok, conversations: list[list[dict[str, str]]], *,
                     max_new_tokens: int, temperature: float, top_p: float, seed: int,
                     samples: int = 1, max_batch: int = 16) -> list[list[Reply]]:
    """`samples` replies per conversation (a list per conversation, in order), decoded in
    batches of up to `max_batch` sequences."""
    from wikigpt_core.generation import generate_chat

    convs = [c for c in conversations for _ in range(samples)]
    params = [SamplingParams(max_new_tokens, temperature, top_p, sample_seed(seed, i, j))
              for i in range(len(conversations)) for j in range(samples)]
    seqs = generate_chat(model, tok, convs, params, max_batch=max_batch)
    replies = [Reply(s.text.strip(), s.finish_reason == "stop", len(s.tokens)) for s in seqs]
    return [replies[i * samples:(i + 1) * samples] for i in range(len(conversations))]

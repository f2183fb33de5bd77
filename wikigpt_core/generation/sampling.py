"""Choosing the next token, and the log-probabilities reported with it.

Sampling runs in float32: temperature 0 is greedy (argmax); otherwise softmax(logits / T),
optionally cut to the nucleus (the smallest probability-sorted prefix whose mass reaches top_p),
then one multinomial draw from the row's own generator, so a seeded request's tokens never
depend on which other requests share its batch. Reported log-probabilities are those of the
model's own distribution (log-softmax of the raw logits, before temperature and top-p), as
OpenAI-compatible servers report them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling distribution (..., V) for temperature > 0, with the nucleus cut applied."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V), all rows with the same settings and generator."""
    if temperature <= 0:
        return logits.float().argmax(dim=-1)
    return torch.multinomial(nucleus_probs(logits, temperature, top_p), 1, generator=generator)[:, 0]


@dataclass
class TokenLogprob:
    """One token's log-probability and, when asked for, the most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]
    """(token id, log-probability), most likely first; empty unless top_logprobs > 0."""


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[TokenLogprob]:
    """For logits (N, V) and chosen ids (N,): each chosen token's log-probability and the
    `top` most likely tokens (N entries)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, chosen[:, None])[:, 0].tolist()
    if top > 0:
        values, ids = logp.topk(top, dim=-1)
        alts = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        alts = [[] for _ in picked]
    return [TokenLogprob(int(c), float(p), a) for c, p, a in zip(chosen.tolist(), picked, alts)]

"""Choosing the next token, and the log-probabilities reported with it.

Sampling runs in float32: temperature 0 is greedy (argmax), and so is any temperature below
`MIN_TEMPERATURE` (softmax(logits / T) there is a one-hot whose division overflows float32 into
NaN); otherwise softmax(logits / T), optionally cut to the nucleus (the smallest
probability-sorted prefix whose mass reaches top_p; the most likely token always stays, so any
top_p > 0, however small, leaves a valid distribution), then one multinomial draw from the row's own generator, so a seeded request's tokens never
depend on which other requests share its batch. Reported log-probabilities are those of the
model's own distribution (log-softmax of the raw logits, before temperature and top-p), as
OpenAI-compatible servers report them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_TEMPERATURE = 1e-5
"""Below this a temperature samples as greedy: logits / T would overflow float32."""


def is_greedy(temperature: float) -> bool:
    """Whether this temperature picks the argmax (0, or too small to divide by safely)."""
    return temperature < MIN_TEMPERATURE


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling distribution (..., V) for temperature > 0, with the nucleus cut applied."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        cut = before >= top_p
        cut[..., 0] = False  # the most likely token always stays (top_p may round to 0 in float32)
        sorted_p = sorted_p.masked_fill(cut, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V), all rows with the same settings and generator."""
    if is_greedy(temperature):
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

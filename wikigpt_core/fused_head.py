"""The LM head and its loss in row chunks, so the (B*T, V) float32 logits never exist whole.

At 124m a micro-batch of 16 x 1,024 tokens has 16,384 x 32,768 logits: 2 GiB in float32, and
the plain path holds that (or more: the float32 copy, the log-softmax, its gradient) at the
step's peak. Here the rows are taken a chunk at a time; each chunk's logits are about the size
of the hidden states that feed them (Liger-Kernel's sizing rule), so the head costs about one
more activation instead of several copies of the logits.

Two functions, for the two ways the head's output is used:

- `chunked_cross_entropy`: the mean next-token loss (pretraining, SFT). A custom autograd
  Function that, while it computes each chunk's loss, also computes that chunk's gradients
  (softmax minus one-hot, times 1/count), as Liger-Kernel's fused linear cross-entropy does;
  backward only scales them by the incoming scalar. Three matmuls per chunk, like the plain
  path (forward, grad input, grad weight): nothing is recomputed. Chosen over a maintained
  kernel package because those are Triton-only (no CPU, so not testable here), and over
  checkpointing each chunk because that runs the head's forward matmul twice.
- `chunked_token_logps`: per-token log p(target) (DPO). Its gradient depends on the other
  sequences of the batch (the loss compares chosen with rejected), so it cannot be computed
  ahead: each chunk is checkpointed (non-reentrant, which torch.compile traces) and recomputed
  in backward. One extra head matmul, a few percent of the step.

Both follow the ambient autocast like `nn.Linear` does (bf16 matmuls, float32 softmax), so
their results equal the plain path's within rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


MIN_CHUNK_ROWS = 1024
"""Fewer rows per chunk only add launches (and Python overhead in eager): at 124m a chunk of
1,024 rows has 128 MiB of float32 logits, against 2 GiB for a whole 16 x 1,024 micro-batch."""


def chunk_rows(rows: int, hidden: int, vocab: int, floor: int | None = None) -> int:
    """Rows per chunk: a chunk's logits (rows x vocab) about as large as all the hidden states
    (rows x hidden), rounded up to a power of two for matmul-friendly shapes, and at least
    `floor` rows (default MIN_CHUNK_ROWS; so a small model's head is one chunk)."""
    floor = MIN_CHUNK_ROWS if floor is None else floor
    chunks = max(1, -(-vocab // hidden))
    per_chunk = -(-rows // chunks)
    return min(rows, max(floor, 1 << (per_chunk - 1).bit_length()))


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden, weight).float()  # bf16 matmul under autocast, softmax in float32


def _picked_and_lse(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    picked = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return picked, torch.logsumexp(logits, dim=-1)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows_per_chunk: int):
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], rows_per_chunk):
            h, t = hidden[start:start + rows_per_chunk], targets[start:start + rows_per_chunk]
            keep = valid[start:start + rows_per_chunk]
            logits = _chunk_logits(h, weight)  # (n, V) float32: the only chunk-sized buffer
            picked, lse = _picked_and_lse(logits, t)
            total = total + ((lse - picked) * keep).sum()
            # d loss / d logits = (softmax - onehot) / count on kept rows; computed in place.
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            grad.scatter_add_(1, t.clamp(min=0).unsqueeze(1), -torch.ones_like(lse).unsqueeze(1))
            grad.mul_((keep / count).unsqueeze(1))
            grad_hidden[start:start + rows_per_chunk] = grad @ weight  # autocast: bf16 like nn.Linear's
            grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy (float32) of the head `weight` (V, C) over `hidden` (N, C) against
    `targets` (N,), ignoring -100 (0 if every target is ignored); never builds (N, V) logits.
    `rows` per chunk defaults to `chunk_rows`."""
    rows = rows or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, rows)
    total, count = hidden.new_zeros((), dtype=torch.float32), (targets != IGNORE_INDEX).sum().clamp(min=1)
    for start in range(0, hidden.shape[0], rows):  # evaluation: the loss alone
        t = targets[start:start + rows]
        picked, lse = _picked_and_lse(_chunk_logits(hidden[start:start + rows], weight), t)
        total = total + ((lse - picked) * (t != IGNORE_INDEX)).sum()
    return total / count


def _token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    picked, lse = _picked_and_lse(_chunk_logits(hidden, weight), targets)
    return (picked - lse) * (targets != IGNORE_INDEX)


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        rows: int | None = None) -> torch.Tensor:
    """log p(target) per row (N,) in float32, 0 where the target is -100, from the head
    `weight` (V, C) over `hidden` (N, C); each chunk's logits are recomputed in backward."""
    rows = rows or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        parts.append(checkpoint(_token_logps, h, weight, t, use_reentrant=False) if grad
                     else _token_logps(h, weight, t))
    return torch.cat(parts)

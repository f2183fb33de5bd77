"""Perplexity on the held-out Wikipedia shard (val.bin: flat uint16 token ids)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


class ShardError(ValueError):
    """A token shard that is missing or too short to evaluate on."""


def eval_windows(val_bin: Path, block_size: int, n_windows: int) -> np.ndarray:
    """Start offsets of `n_windows` evenly spaced windows of block_size + 1 tokens: the same
    windows for every checkpoint, so their perplexities are comparable."""
    path = Path(val_bin)
    if not path.exists():
        raise ShardError(f"{path} does not exist; materialize the `token_shards` asset first")
    n_tokens = path.stat().st_size // 2
    span = n_tokens - (block_size + 1)
    if span < 0:
        raise ShardError(f"{path} holds {n_tokens} tokens, fewer than one window of {block_size + 1}; "
                         "raise shards.val_fraction or use a larger corpus")
    return np.unique(np.linspace(0, span, num=max(1, n_windows)).astype(np.int64))


@torch.no_grad()
def perplexity(model, val_bin: Path, *, n_windows: int, batch_size: int = 8) -> float:
    """exp(mean next-token loss) over the evaluation windows (every window weighs the same)."""
    block = model.config.block_size
    data = np.memmap(val_bin, dtype=np.uint16, mode="r")
    starts = eval_windows(val_bin, block, n_windows)
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = np.stack([data[s:s + block + 1].astype(np.int64) for s in starts[i:i + batch_size]])
        x = torch.from_numpy(chunk[:, :-1]).to(device)
        y = torch.from_numpy(chunk[:, 1:]).to(device)
        _, loss = model(x, y)
        total += float(loss) * len(chunk)
        count += len(chunk)
    # A broken checkpoint's loss can exceed what a float can exponentiate: saturate, not crash.
    return math.exp(min(total / count, 709.0))

"""Training data for the three objectives, all addressed by (step, micro-batch index).

Every micro-batch is a pure function of (seed, step, micro index): no iterator state, so the
"data position" of a resumable run is just its step, and under DDP each rank computes only
the micro-batches it owns (micro % world_size == rank), giving exactly the global batch a
single process would see.

- `TokenShards`: flat uint16 `.bin` files read through `np.memmap` (never loaded whole);
  random windows, seeded per micro-batch.
- `PackedSFT`: Chat examples rendered with `chat.render_example`, packed greedily into
  block_size blocks with per-example segment ids (document masking), tail padded with <|end|>.
- `PreferencePairs`: DPO pairs as prompt + chosen/rejected responses (content + <|end|>).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wikigpt_core import jsonl
from wikigpt_core.chat import IGNORE_INDEX, ChatFormatError, render_example, render_prompt

Batch = dict[str, torch.Tensor]


class DataError(ValueError):
    """A training input that is missing, malformed or too small."""


# ---------------------------------------------------------------- pretraining shards

class TokenShards:
    """Random (x, y) windows of seq_len tokens from a uint16 shard via np.memmap."""

    def __init__(self, path: Path, seq_len: int, batch_size: int, seed: int, vocab_size: int | None = None):
        path = Path(path)
        if not path.exists():
            raise DataError(f"token shard {path} is missing; materialize the token_shards asset")
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")
        if len(self.tokens) < seq_len + 2:
            raise DataError(f"{path} holds {len(self.tokens)} tokens, fewer than seq_len+2={seq_len + 2}; "
                            "use a smaller seq_len or a bigger corpus")
        self.path, self.seq_len, self.batch_size, self.seed = path, seq_len, batch_size, seed
        self.vocab_size = vocab_size

    def batch(self, step: int, micro: int, stream: int = 0) -> Batch:
        """Micro-batch `micro` of optimizer step `step`; `stream` separates train (0) from eval."""
        rng = np.random.default_rng([self.seed, stream, step, micro])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        rows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        chunk = torch.from_numpy(rows)
        return {"idx": chunk[:, :-1].contiguous(), "targets": chunk[:, 1:].contiguous()}


def read_shards_meta(shards_dir: Path) -> dict:
    path = Path(shards_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{path} is missing; {shards_dir} is not a token_shards artifact")
    meta = json.loads(path.read_text())
    if "vocab_size" not in meta:
        raise DataError(f"{path} has no vocab_size")
    return meta


# ---------------------------------------------------------------- packed SFT

@dataclass
class PackStats:
    examples: int = 0
    dropped_too_long: int = 0
    blocks: int = 0
    positions: int = 0
    loss_positions: int = 0
    end_positions: int = 0

    @property
    def loss_fraction(self) -> float:
        return self.loss_positions / max(self.positions, 1)

    @property
    def end_share(self) -> float:
        return self.end_positions / max(self.loss_positions, 1)


def example_arrays(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """Inputs and shifted targets of one example: target[t] = label[t+1]; the last position
    predicts nothing (-100), so no loss ever crosses into the next packed example."""
    return list(ids), list(labels[1:]) + [IGNORE_INDEX]


def pack_examples(examples: list[tuple[list[int], list[int]]], block_size: int, pad_id: int,
                  end_id: int) -> tuple[dict[str, torch.Tensor], PackStats]:
    """Greedy packing in order: an example goes into the current block if it fits, else a new
    block starts. Examples longer than a block are dropped. The tail is padded with `pad_id`
    (<|end|>) at target -100 in its own segment. Returns tensors idx/targets/doc_ids (N, T)."""
    stats = PackStats()
    blocks: list[tuple[list[int], list[int], list[int]]] = []
    cur: tuple[list[int], list[int], list[int]] = ([], [], [])
    seg = 0

    def close() -> None:
        nonlocal cur
        if cur[0]:
            pad = block_size - len(cur[0])
            cur[0].extend([pad_id] * pad)
            cur[1].extend([IGNORE_INDEX] * pad)
            cur[2].extend([-1] * pad)  # padding: its own segment
            blocks.append(cur)
        cur = ([], [], [])

    for ids, labels in examples:
        if len(ids) > block_size:
            stats.dropped_too_long += 1
            continue
        stats.examples += 1
        x, y = example_arrays(ids, labels)
        if len(cur[0]) + len(x) > block_size:
            close()
        cur[0].extend(x)
        cur[1].extend(y)
        cur[2].extend([seg] * len(x))
        seg += 1
    close()
    if not blocks:
        t = torch.zeros((0, block_size), dtype=torch.long)
        return {"idx": t, "targets": t.clone(), "doc_ids": t.clone()}, stats
    idx, targets, doc = (torch.tensor([b[i] for b in blocks], dtype=torch.long) for i in range(3))
    stats.blocks = len(blocks)
    stats.positions = idx.numel()
    stats.loss_positions = int((targets != IGNORE_INDEX).sum())
    stats.end_positions = int((targets == end_id).sum())
    return {"idx": idx, "targets": targets, "doc_ids": doc}, stats


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a training input file; DataError if it is missing or malformed."""
    return jsonl.read_jsonl(path, DataError)


def render_sft_file(path: Path, tok) -> list[tuple[list[int], list[int]]]:
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        try:
            out.append(render_example(row["messages"], tok))
        except (KeyError, ChatFormatError) as e:
            raise DataError(f"{path}:{n}: bad SFT example ({e}); each line needs valid 'messages'") from None
    return out


class BlockBatches:
    """Micro-batches over a fixed tensor set (packed blocks), epoch-shuffled with a seed.

    Micro-batch g = step * grad_accum + micro takes rows [g*B, (g+1)*B) of the concatenation
    of per-epoch permutations, so any (step, micro) is computed directly."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, grad_accum: int, seed: int,
                 shuffle: bool = True):
        self.tensors, self.batch_size, self.grad_accum = tensors, batch_size, grad_accum
        self.seed, self.shuffle = seed, shuffle
        self.n = next(iter(tensors.values())).shape[0]
        if self.n == 0:
            raise DataError("no training blocks: every example was dropped or the file is empty")
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms[epoch] = torch.randperm(self.n, generator=g)
            else:
                self._perms[epoch] = torch.arange(self.n)
        return self._perms[epoch]

    def rows(self, step: int, micro: int) -> torch.Tensor:
        g = step * self.grad_accum + micro
        pos = torch.arange(g * self.batch_size, (g + 1) * self.batch_size)
        return torch.stack([self._perm(int(p) // self.n)[int(p) % self.n] for p in pos])

    def batch(self, step: int, micro: int) -> Batch:
        rows = self.rows(step, micro)
        return {k: v[rows] for k, v in self.tensors.items()}

    def eval_batches(self, limit: int | None = None):
        """All rows in order, batch_size at a time (at most `limit` batches)."""
        for i, s in enumerate(range(0, self.n, self.batch_size)):
            if limit is not None and i >= limit:
                return
            yield {k: v[s:s + self.batch_size] for k, v in self.tensors.items()}


# ---------------------------------------------------------------- DPO pairs

@dataclass
class PairStats:
    pairs: int = 0
    dropped_too_long: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def encode_pairs(path: Path, tok, block_size: int):
    """Each pair -> (prompt ids, chosen ids, rejected ids); responses end with <|end|>.
    Pairs whose prompt + longer response exceed block_size are dropped and counted."""
    stats = PairStats()
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        try:
            prompt = render_prompt(row["prompt"], tok)
            chosen = tok.encode(row["chosen"]) + [tok.end_id]
            rejected = tok.encode(row["rejected"]) + [tok.end_id]
        except (KeyError, TypeError, ChatFormatError) as e:
            raise DataError(f"{path}:{n}: bad preference pair ({e}); need prompt/chosen/rejected") from None
        if len(prompt) + max(len(chosen), len(rejected)) > block_size:
            stats.dropped_too_long += 1
            continue
        kind = str(row.get("kind", "unknown"))
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        stats.pairs += 1
        out.append((prompt, chosen, rejected))
    return out, stats


def pair_tensors(pairs, pad_id: int) -> dict[str, torch.Tensor]:
    """Stack pairs into padded tensors: chosen_idx/chosen_targets/rejected_idx/rejected_targets
    (N, L) where targets mark response tokens only (prompt and padding are -100), and the
    unpadded lengths chosen_len/rejected_len (N,)."""
    def seqs(which: int):
        rows = []
        for p in pairs:
            full = p[0] + p[which]
            tgt = [IGNORE_INDEX] * (len(p[0]) - 1) + p[which] + [IGNORE_INDEX]  # shifted
            rows.append((full, tgt))
        return rows

    chosen, rejected = seqs(1), seqs(2)
    L = max(len(r[0]) for r in chosen + rejected)
    out = {}
    for name, rows in (("chosen", chosen), ("rejected", rejected)):
        out[f"{name}_idx"] = torch.tensor([r[0] + [pad_id] * (L - len(r[0])) for r in rows], dtype=torch.long)
        out[f"{name}_targets"] = torch.tensor([r[1] + [IGNORE_INDEX] * (L - len(r[1])) for r in rows],
                                              dtype=torch.long)
        out[f"{name}_len"] = torch.tensor([len(r[0]) for r in rows], dtype=torch.long)
    return out

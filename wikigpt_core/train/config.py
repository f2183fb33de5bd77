"""Glue between the settings (GPTConfig, TrainConfig) and a training run: step counts,
sequence length, and the run key that decides whether a checkpoint may be resumed."""
from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

from wikigpt_core.artifacts import manifest_hash
from wikigpt_core.config import as_dict


def seq_len(train_cfg, model_cfg) -> int:
    n = train_cfg.seq_len or model_cfg.block_size
    if n > model_cfg.block_size:
        raise ValueError(f"seq_len={n} exceeds the model's block_size={model_cfg.block_size}")
    return n


def derive_max_steps(train_cfg, units: int) -> int:
    """Optimizer steps: from `epochs` over `units` rows (blocks or pairs) when set, else
    `max_steps`. One step consumes batch_size * grad_accum rows."""
    if train_cfg.epochs is None:
        return train_cfg.max_steps
    per_step = train_cfg.batch_size * train_cfg.grad_accum
    steps = max(1, math.ceil(train_cfg.epochs * units / per_step))
    if steps < train_cfg.warmup_steps:
        warnings.warn(f"{train_cfg.epochs} epochs over {units} rows give {steps} steps, fewer than "
                      f"warmup_steps={train_cfg.warmup_steps}; warmup is clamped", stacklevel=2)
    return steps


# TrainConfig fields that do not change the trained weights: changing them keeps the run key.
_BOOKKEEPING = {"eval_interval", "eval_iters", "sample_interval", "ckpt_interval", "ckpt_minutes",
                "keep_last_k", "log_interval", "compile", "compile_mode", "attention"}


def input_fingerprint(path: Path) -> str:
    """An artifact's content hash from its manifest; else a hash of file names, sizes and
    modification times (cheap, and changes whenever the files do)."""
    path = Path(path)
    recorded = manifest_hash(path)
    if recorded is not None:
        return recorded
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def key_payload(stage: str, model_cfg, train_cfg, inputs: dict[str, Path]) -> dict:
    """What a resumable checkpoint must agree with. The world size is not part of it: data is
    addressed by (step, micro-batch), so a run may resume on a different number of GPUs."""
    train = {k: v for k, v in as_dict(train_cfg).items() if k not in _BOOKKEEPING}
    return {"stage": stage, "model": as_dict(model_cfg), "train": train,
            "inputs": {k: input_fingerprint(v) for k, v in sorted(inputs.items())}}

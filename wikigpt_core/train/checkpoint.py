"""Resumable checkpoints in the stage's work dir.

Layout: `<work>/<run_key>/ckpt-<step:08d>/{model.safetensors, config.json, resume.pt}`.
- `model.safetensors`: the weights (no pickle).
- `resume.pt`: optimizer state, step, RNG states, data position and run bookkeeping, written
  with torch.save and read back with `torch.load(weights_only=True)` (tensors and plain
  Python containers only).
A checkpoint is written into a temp dir and renamed into place, so every `ckpt-*` dir is
complete; a run killed mid-write leaves only a `.tmp-*` dir that the next start deletes.
`run_key` hashes the config and the inputs: a changed config or input lands in a new key and
stale keys are removed, so a resume never mixes runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from wikigpt_core.model_io import load_weights, save_model, unwrap

RESUME_FILE = "resume.pt"


def run_key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """save(step, ...) every `interval` steps and at the end; keeps the newest `keep_last_k`."""

    def __init__(self, work: Path, key: str, interval: int, keep_last_k: int, enabled: bool = True):
        self.root = Path(work)
        self.dir = self.root / key
        self.interval, self.keep = max(interval, 1), max(keep_last_k, 1)
        self.enabled = enabled  # False on DDP ranks other than 0: only rank 0 writes
        self.saved = 0
        """Checkpoints this process wrote (reported in the stage's stats)."""
        if enabled:
            self._clear_stale(key)
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _clear_stale(self, key: str) -> None:
        """Remove checkpoints of other run keys (config or inputs changed)."""
        if self.root.exists():
            for d in self.root.iterdir():
                if d.is_dir() and d.name != key and len(d.name) == 16:
                    shutil.rmtree(d, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        return sorted(self.dir.glob("ckpt-*")) if self.dir.exists() else []

    def due(self, step: int, final: bool) -> bool:
        return final or step % self.interval == 0

    def save(self, step: int, model, optimizer, extra: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        tmp = self.dir / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        save_model(model, tmp)
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), **extra}
        with (tmp / RESUME_FILE).open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        final = self.dir / f"ckpt-{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        self.saved += 1
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_latest(self, model, optimizer) -> dict[str, Any] | None:
        """Restore the newest checkpoint into model/optimizer (and RNG); return its state dict
        (step, data position, bookkeeping) or None when there is none."""
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        latest = ckpts[-1]
        weights = load_file(str(latest / "model.safetensors"))
        gpt = unwrap(model)
        with torch.no_grad():
            device = next(gpt.parameters()).device
            load_weights(gpt, {k: v.to(device) for k, v in weights.items()}, source=str(latest))
        state = torch.load(latest / RESUME_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return state

    def clear(self) -> None:
        """Called once the artifact is published: the scratch is no longer needed."""
        if self.enabled:
            shutil.rmtree(self.dir, ignore_errors=True)

"""Resumable checkpoints in the stage's work dir.

Layout: `<work>/<run_key>/ckpt-<step:08d>/{model.safetensors, config.json, resume.pt}`.
- `model.safetensors`: the weights (no pickle).
- `resume.pt`: optimizer state, step, RNG states (CPU, Python, and the CUDA generator of the
  device that trained, if any), data position and run bookkeeping, written
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
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from wikigpt_core.model_io import load_weights, save_model, unwrap

RESUME_FILE = "resume.pt"


def run_key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rng_state(device: torch.device) -> dict[str, Any]:
    """CPU and Python RNG states, plus the CUDA generator of `device` when training runs there.

    Only the current device's CUDA state is kept (dropout draws from it): a state per visible
    GPU would tie the checkpoint to the number of GPUs it was written on."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s output. A CUDA state is restored into `device` when that is a GPU
    and skipped otherwise (a GPU checkpoint resumed on CPU has no CUDA generator to seed)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    torch.cuda.set_rng_state(_this_device_state(cuda, device), device)


def _this_device_state(cuda: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The CUDA RNG state for `device` from a checkpoint's entry.

    Older checkpoints hold a list, one state per GPU visible to the rank that saved. Decision:
    take the entry of this device's index when the list has one (what restoring the whole list
    gave on the same GPU count), else the first entry (the saving rank's own device): a run
    resumed on fewer GPUs then keeps going instead of failing, as a changed GPU count already
    changes which rank draws which random numbers."""
    if isinstance(cuda, torch.Tensor):
        return cuda
    index = device.index if device.index is not None else torch.cuda.current_device()
    return cuda[index] if index < len(cuda) else cuda[0]


class Checkpointer:
    """save(step, ...) every `interval` steps, every `minutes` of wall time and at the end;
    keeps the newest `keep_last_k`.

    The step rule is the same on every rank. The wall-time rule is not (each rank has its own
    clock), so `clock_due()` only reports this rank's view: the Trainer combines the ranks'
    answers before anyone saves, because the save ends in a barrier every rank must enter."""

    def __init__(self, work: Path, key: str, interval: int, keep_last_k: int, enabled: bool = True,
                 minutes: float = 0.0, clock: Callable[[], float] = time.monotonic):
        if minutes < 0:
            raise ValueError(f"ckpt_minutes = {minutes!r} must be >= 0 (0 turns time-based checkpoints off)")
        self.root = Path(work)
        self.dir = self.root / key
        self.interval, self.keep = max(interval, 1), max(keep_last_k, 1)
        self.seconds = 60.0 * minutes
        self.clock = clock
        self.last_save = clock()
        """When the wall-time rule last restarted: the previous save, or the start of training."""
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

    def due(self, step: int, final: bool, clock_due: bool = False) -> bool:
        """Whether to save after `step`: at the end, every `interval` steps, or when the ranks
        agreed that `clock_due()` (passed in as `clock_due`)."""
        return final or step % self.interval == 0 or clock_due

    def clock_due(self) -> bool:
        """Whether `minutes` of wall time passed since the last save, on this rank's clock."""
        return self.seconds > 0 and self.clock() - self.last_save >= self.seconds

    def save(self, step: int, model, optimizer, extra: dict[str, Any]) -> Path | None:
        self.last_save = self.clock()  # on every rank, so their clocks stay comparable
        if not self.enabled:
            return None
        tmp = self.dir / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        save_model(model, tmp)
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(_device(model)),
                 **extra}
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
        (step, data position, bookkeeping) or None when there is none. Called as training
        starts, so the wall-time rule counts from here, not from the model's setup."""
        self.last_save = self.clock()
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        latest = ckpts[-1]
        weights = load_file(str(latest / "model.safetensors"))
        gpt, device = unwrap(model), _device(model)
        with torch.no_grad():
            load_weights(gpt, {k: v.to(device) for k, v in weights.items()}, source=str(latest))
        state = torch.load(latest / RESUME_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], device)
        return state

    def clear(self) -> None:
        """Called once the artifact is published: the scratch is no longer needed."""
        if self.enabled:
            shutil.rmtree(self.dir, ignore_errors=True)


def _device(model) -> torch.device:
    """The device the model trains on (that of its first parameter)."""
    return next(unwrap(model).parameters()).device

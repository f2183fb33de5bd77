"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

lr(step) for the optimizer step about to be taken (0-based):
  step <  warmup:            lr * (step + 1) / warmup        (never exactly 0)
  warmup <= step < max:      floor + (lr - floor) * 0.5 * (1 + cos(pi * progress))
  step >= max:               floor
with floor = lr * min_ratio and progress = (step - warmup) / (max_steps - warmup).
A warmup longer than the run is clamped to the run (with a warning): the run then only warms up.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    lr: float
    warmup_steps: int
    max_steps: int
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_ratio}")
        if self.warmup_steps > self.max_steps:
            warnings.warn(f"warmup_steps={self.warmup_steps} exceeds max_steps={self.max_steps}; "
                          f"clamping warmup to {self.max_steps}", stacklevel=2)
            object.__setattr__(self, "warmup_steps", self.max_steps)

    @property
    def floor(self) -> float:
        return self.lr * self.min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = self.max_steps - self.warmup_steps
        if step >= self.max_steps or decay_steps <= 0:
            return self.floor
        progress = (step - self.warmup_steps) / decay_steps
        return self.floor + (self.lr - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

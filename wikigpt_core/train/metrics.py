"""Metric logging: one `log(metrics, step)` feeding a JSONL file, W&B and a callback.

Keys are namespaced (`loss/train`, `loss/val`, `lr`, `tps`, `mfu`, `time/step_ms`, `sft/…`,
`dpo/…`); the same dict goes to every sink, so Dagster metadata (via `on_metrics`) and W&B
show identical numbers.

W&B: offline by default, files under `<dir>/wandb`; set WANDB_MODE=online (and WANDB_API_KEY)
to sync live, or WANDB_MODE=disabled to skip it. The key is read by wandb itself from the
environment and never logged here. wandb is the optional `wandb` extra: without it, the default
(offline) mode warns once and logs to the JSONL file and the callback only, while an explicit
WANDB_MODE=online fails at once (live curves were asked for and cannot happen).
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

MetricsCallback = Callable[[dict[str, float], int], None]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls with the parameters (forward + backward)
    plus the attention scores/values term 6 * 2 * n_layer * seq_len * n_embd (PaLM app. B)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


# Dense bf16 peaks in TFLOP/s (no sparsity).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "RTX 4090": 165.0, "4090": 165.0}


def gpu_peak_flops(device_name: str) -> float | None:
    for key, tf in GPU_PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return tf * 1e12
    return None


class MetricLogger:
    def __init__(self, log_path: Path | None, *, on_metrics: MetricsCallback | None = None,
                 wandb_dir: Path | None = None, wandb_project: str = "wikigpt",
                 run_name: str | None = None, run_id: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.log_path = Path(log_path) if log_path else None
        self.on_metrics = on_metrics
        self.history: list[dict[str, Any]] = []
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb = None
        self.wandb_run: str | None = None
        """Where to find this run in W&B: its URL when online, its local offline-run dir
        otherwise (`wandb sync <dir>` uploads it later)."""
        mode = os.environ.get("WANDB_MODE", "offline")
        if wandb_dir is not None and mode != "disabled" and _wandb_available(mode):
            self._wandb = _init_wandb(Path(wandb_dir), mode, wandb_project, run_name, run_id, config)
            self.wandb_run = getattr(self._wandb, "url", None) or str(Path(self._wandb.dir).parent)

    def resume(self, resume_step: int | None) -> None:
        """Called once the run knows where it starts: a fresh run (None) drops an old log; a
        resumed run keeps only lines up to the restored step (later ones were lost work)."""
        if self.log_path is None or not self.log_path.exists():
            return
        if resume_step is None:
            self.log_path.unlink()
            return
        keep = [ln for ln in self.log_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
        self.log_path.write_text("".join(ln + "\n" for ln in keep))
        self.history = [json.loads(ln) for ln in keep]

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if self.on_metrics is not None:
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if scalars:
                self.on_metrics(scalars, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


WANDB_MISSING = ("wandb is not installed (it is the optional `wandb` extra: "
                 "pip install -e \".[wandb]\"")


def _wandb_available(mode: str) -> bool:
    if importlib.util.find_spec("wandb") is not None:
        return True
    if mode == "online":
        raise RuntimeError(f"WANDB_MODE=online but {WANDB_MISSING}); install it, or unset "
                           "WANDB_MODE to train without W&B")
    warnings.warn(f"{WANDB_MISSING}); metrics go to log.jsonl and Dagster only, no W&B run",
                  RuntimeWarning, stacklevel=3)
    return False


def _init_wandb(directory: Path, mode: str, project: str, name: str | None, run_id: str | None,
                config: dict[str, Any] | None):
    import wandb  # imported lazily: it is slow to import and optional at run time

    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", project), name=name, id=run_id,
                      resume="allow", dir=str(directory), mode=mode, config=config or {},
                      settings=wandb.Settings(silent=True, console="off"))

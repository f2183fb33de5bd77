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
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MetricsCallback = Callable[[dict[str, float], int], None]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls with the parameters (forward + backward)
    plus the attention scores/values term 6 * 2 * n_layer * seq_len * n_embd (PaLM app. B)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


@dataclass(frozen=True)
class GpuPeak:
    pattern: str
    """Regex searched (case-insensitively) in `torch.cuda.get_device_name()`."""
    tflops: float
    """Dense bf16 tensor TFLOP/s with float32 accumulation, no sparsity."""
    source: str
    """Where the figure is published."""


# Datasheets quote tensor figures "with sparsity"; the dense figure is half of that. Patterns are
# anchored, so a variant with other silicon (RTX 3090 Ti, 4090 D, a laptop part, GH200) matches
# nothing and gets no MFU rather than a wrong one.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(r"\bRTX 3090\s*$", 71.0, "NVIDIA Ampere GA102 whitepaper, RTX 3090: peak BF16 tensor, FP32 accumulate"),
    GpuPeak(r"\bRTX 4090\s*$", 165.2, "NVIDIA Ada Lovelace whitepaper, RTX 4090: peak BF16 tensor, FP32 accumulate"),
    GpuPeak(r"\bRTX 5090\s*$", 209.5, "NVIDIA RTX Blackwell whitepaper, RTX 5090: peak BF16 tensor, FP32 accumulate"),
    GpuPeak(r"\bL4\s*$", 121.0, "NVIDIA L4 datasheet: BF16 tensor 242 with sparsity"),
    GpuPeak(r"\bL40S\s*$", 362.0, "NVIDIA L40S datasheet: BF16 tensor 362.05 (733 with sparsity)"),
    # AWS's A10G has no NVIDIA datasheet of its own; the published figure for this GA102
    # data-center part is the A10's (also what PyTorch Lightning's FLOPs table uses).
    GpuPeak(r"\bA10G\s*$", 125.0, "NVIDIA A10 datasheet: BF16 tensor 125 (250 with sparsity)"),
    GpuPeak(r"\bA100\b", 312.0, "NVIDIA A100 datasheet: BF16 tensor 312 (624 with sparsity), 40 and 80 GB, SXM and PCIe"),
    GpuPeak(r"\bH100\b.*\bHBM3\b|\bH100 SXM", 989.0, "NVIDIA H100 datasheet, SXM: BF16 tensor 1,979 with sparsity"),
    GpuPeak(r"\bH100\b.*\b(PCIe|HBM2e)\b", 756.0, "NVIDIA H100 datasheet, PCIe: BF16 tensor 1,513 with sparsity"),
    GpuPeak(r"\bH100 NVL\b", 835.0, "NVIDIA H100 datasheet, NVL: BF16 tensor 1,671 with sparsity"),
    GpuPeak(r"\bH200\s*$|\bH200 SXM", 989.0, "NVIDIA H200 datasheet, SXM: BF16 tensor 1,979 with sparsity"),
    GpuPeak(r"\bH200 NVL\b", 835.0, "NVIDIA H200 datasheet, NVL: BF16 tensor 1,671 with sparsity"),
    GpuPeak(r"\bB200\s*$", 2250.0, "NVIDIA HGX B200 datasheet: FP16/BF16 tensor 4.5 PFLOPS per GPU with sparsity"),
)

_unknown_gpus: set[str] = set()


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The table entry for a CUDA device name; the longest match wins (the most specific)."""
    found = [(m.end() - m.start(), peak) for peak in GPU_PEAKS
             if (m := re.search(peak.pattern, device_name, re.IGNORECASE))]
    return max(found, key=lambda hit: hit[0])[1] if found else None


def gpu_peak_flops(device_name: str) -> float | None:
    """Dense bf16 FLOP/s of a GPU by its CUDA device name, or None (warned once per name) for
    a GPU missing from GPU_PEAKS: no MFU is better than a wrong one."""
    peak = gpu_peak(device_name)
    if peak is None:
        if device_name not in _unknown_gpus:
            _unknown_gpus.add(device_name)
            warnings.warn(f"MFU unknown for {device_name}: it has no dense bf16 peak in "
                          "wikigpt_core.train.metrics.GPU_PEAKS (add its datasheet figure there)",
                          RuntimeWarning, stacklevel=2)
        return None
    return peak.tflops * 1e12


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

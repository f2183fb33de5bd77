"""Report a stage's progress and result to whoever launched it: Dagster Pipes, or a terminal.

A stage CLI wraps its work like this:

    with stage_reporter("pretrain") as rep:
        result = run_pretrain(..., on_metrics=rep.metrics)
        rep.report(result)

When the process was started by Dagster Pipes (locally by `PipesSubprocessClient`, or on a
rented GPU by the SkyPilot launcher, which injects the same environment variables), metric
updates become Dagster log lines plus `report_custom_message` payloads, and `report` sends an
asset materialization whose metadata is the stage's flattened stats and whose data_version is
the artifact's content hash. Without Pipes everything is printed, so the same CLI runs on a bare
GPU box.

This is the only module in `wikigpt_core` that touches `dagster_pipes`, and it imports it lazily,
only when `DAGSTER_PIPES_CONTEXT` is set: the library itself never needs Dagster.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from wikigpt_core.artifacts import StageResult

PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"
METRICS_MESSAGE = "metrics"
"""`type` field of the custom message carrying one `on_metrics` call."""
RESULT_MESSAGE = "stage_result"
"""`type` field of the custom message carrying the final stats (sent in every mode)."""
ERROR_MESSAGE = "error"
"""`type` field of the custom message carrying a failing stage's traceback."""
_ERROR_CHARS = 4_000


def flatten_stats(stats: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become `a/b` keys; JSON scalars and lists are kept, anything else is
    JSON-encoded (Pipes metadata accepts no raw dicts).

    Non-finite floats (NaN, inf) are turned into strings: Dagster's float metadata and JSON
    both reject them, and a NaN loss is exactly what someone needs to see.
    """
    flat: dict[str, Any] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_stats(value, prefix=f"{name}/"))
        elif isinstance(value, bool) or isinstance(value, (int, str)) or value is None:
            flat[name] = value
        elif isinstance(value, float):
            flat[name] = value if math.isfinite(value) else str(value)
        elif hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            flat.update(flatten_stats({key: value.item()}, prefix=prefix))
        elif isinstance(value, (list, tuple)):
            # Lists (e.g. table rows) stay lists: Pipes carries them as JSON and the launcher
            # renders a list of row dicts as a table. Round-trip through JSON to drop
            # anything JSON cannot hold (NaN becomes a string, objects their str()).
            flat[name] = json.loads(json.dumps(_json_safe(value), default=str))
        else:
            flat[name] = json.dumps(value, default=str)
    return {k: v for k, v in flat.items() if v is not None}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float | int | str]:
    return flatten_stats(metrics)


def _format_metrics(metrics: Mapping[str, Any], step: int) -> str:
    parts = []
    for k, v in _scalars(metrics).items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"step {step}: " + " ".join(parts)


TOTAL_STEPS = "steps/total"
"""Metrics key: a training run's optimizer step count (the trainer's rows carry it, so an
epochs-based run has a total and an ETA too)."""
PROGRESS_EVERY_S = 5.0
"""A training stage's console progress line comes at most this often (plus its last step)."""


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


BAR_WIDTH = 20


def format_progress(stage: str, step: int, total: int | None, loss: float | None,
                    tokens_per_s: float | None, eta_s: float | None,
                    val_loss: float | None = None, val_step: int | None = None) -> str:
    """One progress line of a training stage, e.g.
    `base_checkpoint        [########............] step 120/300  40%  loss 4.2130 (val@100 4.3012)  1,234 tok/s  ETA 2m31s`
    (the last validation loss and the step it was measured at)."""
    if total:
        filled = min(BAR_WIDTH, BAR_WIDTH * step // total)
        where = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] step {step}/{total} {100 * step / total:3.0f}%"
    else:
        where = f"step {step}/?"
    parts = [where]
    if loss is not None:
        val = f" (val@{val_step} {val_loss:.4f})" if val_loss is not None else ""
        parts.append(f"loss {loss:.4f}{val}")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    parts.append(f"ETA {format_duration(eta_s)}" if eta_s is not None else "ETA ?")
    return f"{stage:<20}   " + "  ".join(parts)


class ProgressMeter:
    """Turns a training loop's metric calls into a readable line at most every `every_s`
    seconds (always for the first and the last step, and for the validation after the last
    step). The ETA comes from the wall-clock pace
    since the first step seen (evaluations and checkpoints included); until there is a pace,
    from the loop's own `time/step_ms`."""

    def __init__(self, stage: str, total: int | None = None, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage, self.total, self.every_s, self.clock = stage, total, every_s, clock
        self.loss: float | None = None
        self.val_loss: float | None = None
        self.val_step: int | None = None
        self.tokens_per_s: float | None = None
        self.step_ms: float | None = None
        self._first: tuple[float, int] | None = None
        self._printed: float | None = None

    def update(self, metrics: Mapping[str, Any], step: int) -> str | None:
        """Record one metrics call; return the line to print now, or None."""
        now = self.clock()
        total = metrics.get(TOTAL_STEPS)
        if isinstance(total, int) and total > 0:
            self.total = total
        val = metrics.get("loss/val")
        if isinstance(val, (int, float)):
            self.val_loss, self.val_step = float(val), step
        loss = metrics.get("loss/train")
        if not isinstance(loss, (int, float)):
            # an evaluation, a sample or data statistics: kept for the next line, except the
            # validation after the last step, which no later line would show
            if val is not None and self.loss is not None and self._is_last(step):
                return self._line(step, now)
            return None
        self.loss = float(loss)
        for key, attr in (("tps", "tokens_per_s"), ("time/step_ms", "step_ms")):
            if isinstance(metrics.get(key), (int, float)):
                setattr(self, attr, float(metrics[key]))
        if self._first is None:
            self._first = (now, step)
        if self._printed is not None and now - self._printed < self.every_s and not self._is_last(step):
            return None
        return self._line(step, now)

    def _is_last(self, step: int) -> bool:
        return self.total is not None and step >= self.total

    def _line(self, step: int, now: float) -> str:
        self._printed = now
        return format_progress(self.stage, step, self.total, self.loss, self.tokens_per_s,
                               self.eta(step, now), self.val_loss, self.val_step)

    def eta(self, step: int, now: float) -> float | None:
        if self.total is None:
            return None
        left = max(0, self.total - step)
        t0, s0 = self._first or (now, step)
        if step > s0 and now > t0:
            return left * (now - t0) / (step - s0)
        if self.step_ms is not None:
            return left * self.step_ms / 1000
        return None


class StageReporter:
    """Prints progress and the final result (the behaviour outside Dagster)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.last_metrics: dict[str, Any] = {}
        self.last_step: int | None = None

    def metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """The `on_metrics(dict, step)` callback of the training functions."""
        self.last_metrics.update(_scalars(metrics))
        self.last_step = int(step)
        self._emit_metrics(metrics, int(step))

    def log(self, message: str) -> None:
        print(f"[{self.stage}] {message}", flush=True)

    def report(self, result: StageResult) -> None:
        """Hand the stage's result back: path, content hash (the DataVersion) and stats."""
        print(json.dumps({"type": RESULT_MESSAGE, "stage": self.stage, "path": str(result.path),
                          "content_hash": result.content_hash,
                          "stats": flatten_stats(result.stats)}, default=str), flush=True)

    def _emit_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        print(f"[{self.stage}] {_format_metrics(metrics, step)}", flush=True)


class SilentReporter(StageReporter):
    """For non-zero DDP ranks: accepts the same calls and reports nothing."""

    def log(self, message: str) -> None:
        pass

    def report(self, result: StageResult) -> None:
        pass

    def _emit_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass


class PipesStageReporter(StageReporter):
    """Forwards progress and the result through an open `dagster_pipes.PipesContext`."""

    def __init__(self, stage: str, pipes: Any) -> None:
        super().__init__(stage)
        self.pipes = pipes

    def log(self, message: str) -> None:
        self.pipes.log.info(f"[{self.stage}] {message}")

    def _emit_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        # The log line shows up live in the Dagster run log; the custom message lets the
        # launcher rebuild the curve and the last values as metadata.
        self.pipes.log.info(f"[{self.stage}] {_format_metrics(metrics, step)}")
        self.pipes.report_custom_message(
            {"type": METRICS_MESSAGE, "step": step, "metrics": _scalars(metrics)})

    def report(self, result: StageResult) -> None:
        stats = flatten_stats(result.stats)
        self.pipes.report_custom_message(
            {"type": RESULT_MESSAGE, "stage": self.stage, "path": str(result.path),
             "content_hash": result.content_hash, "stats": stats})
        if self.pipes.is_asset_step:
            metadata = {**stats, "content_hash": result.content_hash}
            if self.last_step is not None:
                metadata["last_step"] = self.last_step
            self.pipes.report_asset_materialization(metadata=metadata,
                                                    data_version=result.content_hash)
        self.pipes.log.info(f"[{self.stage}] done: {result.path} ({result.content_hash[:12]})")


def running_under_pipes() -> bool:
    return PIPES_CONTEXT_ENV in os.environ


@contextmanager
def stage_reporter(stage: str | None = None) -> Iterator[StageReporter]:
    """Yield a reporter for this process: Pipes-backed when launched by Dagster, else printing.

    Under Pipes, an exception escaping the block is sent to Dagster (with its traceback) before
    the connection closes, then re-raised so the process exits non-zero.
    """
    name = stage or os.path.basename(sys.argv[0]).removesuffix(".py")
    if int(os.environ.get("RANK", "0")) != 0:
        yield SilentReporter(name)  # under torchrun only rank 0 speaks for the stage
        return
    if not running_under_pipes():
        yield StageReporter(name)
        return
    from dagster_pipes import open_dagster_pipes  # lazy: only a Pipes-launched process needs it

    with open_dagster_pipes() as pipes:
        reporter = PipesStageReporter(name, pipes)
        try:
            yield reporter
        except BaseException as exc:
            # Sent as a custom message too, so the launcher can put it in the asset's error.
            text = "".join(traceback.format_exception(exc))
            pipes.report_custom_message({"type": ERROR_MESSAGE, "error": text[-_ERROR_CHARS:]})
            raise

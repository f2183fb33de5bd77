"""The console progress `wikigpt run` / `refresh` print (logger wikigpt.progress): a line per
asset as it starts and ends, and for a training stage a line every few seconds from its
metrics, the same whether the stage runs in-process, as a local subprocess or on a rented GPU
(whose Pipes messages arrive in its job log)."""
from __future__ import annotations

import logging
from typing import Any, Mapping

PROGRESS = logging.getLogger("wikigpt.progress")


class StageProgress:
    """One stage's metrics as progress lines. The step total comes with the trainer's rows
    (`steps/total`), so nothing needs to be known before the stage starts."""

    def __init__(self, stage: str) -> None:
        from wikigpt_core.pipes_bridge import ProgressMeter

        self.meter = ProgressMeter(stage)

    def metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        line = self.meter.update(metrics, step)
        if line:
            PROGRESS.info(line)

    def pipes_message(self, message: Any) -> None:
        """A Pipes message from the stage: its metrics messages become progress lines."""
        from wikigpt_core.pipes_bridge import METRICS_MESSAGE

        if not isinstance(message, dict) or message.get("method") != "report_custom_message":
            return
        payload = (message.get("params") or {}).get("payload")
        if isinstance(payload, dict) and payload.get("type") == METRICS_MESSAGE:
            self.metrics(payload.get("metrics") or {}, int(payload.get("step", 0)))


# --- failures, in one line each on the console and in full in a log file ---------------------

_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}
"""Dagster's own wrappers around the error a step raised; the summary skips them."""
_TRACEBACK_START = "Traceback (most recent call last)"


class OneLineFormatter(logging.Formatter):
    """Progress lines stay one line each, whatever a message carries (a stage's traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def one_line(text: str, limit: int = 600) -> str:
    """The first line of `text`, and the last line of a traceback it embeds (the error itself)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[0]
    if _TRACEBACK_START in text and lines[-1] != line:
        line += f" ... {lines[-1]}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_summary(error) -> str:
    """One line for a SerializableErrorInfo: the error the step raised, not Dagster's wrapper."""
    while error.cls_name in _WRAPPERS and error.cause is not None:
        error = error.cause
    qualified, sep, message = error.message.partition(": ")  # "dagster....Failure: <message>"
    return one_line(message if sep and qualified.endswith(error.cls_name) else error.message)


def failure_lines(instance, run_id: str) -> list[str]:
    """`<step>: <error>` for each failed step of the run (the run's own failure if none)."""
    import dagster as dg

    steps = [f"{e.step_key}: {error_summary(e.dagster_event.step_failure_data.error)}"
             for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    if steps:
        return steps
    return [one_line(e.message) for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]


def write_run_log(instance, run_id: str, path) -> None:
    """Every event of the run, with each error's full traceback, as text."""
    import datetime
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for entry in instance.all_logs(run_id):
            when = datetime.datetime.fromtimestamp(entry.timestamp).isoformat(timespec="seconds")
            f.write(f"{when} {logging.getLevelName(entry.level):<7} {entry.step_key or '-'}  {entry.message}\n")
            error = entry.dagster_event.event_specific_data if entry.dagster_event else None
            info = getattr(error, "error", None)
            if info is not None:
                f.write(info.to_string() + "\n")

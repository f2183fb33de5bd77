"""Turn what a stage process reported over Dagster Pipes into one `MaterializeResult`.

The stage CLI (through `wikigpt_core.pipes_bridge.stage_reporter`) sends, in order: metric
custom messages while it trains, a `stage_result` custom message, and an asset
materialization whose metadata is the flattened stats and whose data_version is the artifact's
content hash. Both launchers collect those messages and build the asset's result here, adding
the last value of every metric and whatever the launcher itself measured (backend, seconds,
cost).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import dagster as dg

from wikigpt_core.pipes_bridge import ERROR_MESSAGE, METRICS_MESSAGE, RESULT_MESSAGE
from wikigpt_pipeline.metadata import to_metadata


class StageLaunchError(Exception):
    """A stage process failed or did not report a result; the message says which and why."""


def last_metrics(custom_messages: Iterable[Any]) -> tuple[int | None, dict[str, Any]]:
    """Last step seen and the last value of every metric key, from the metric messages."""
    step: int | None = None
    values: dict[str, Any] = {}
    for msg in custom_messages:
        if isinstance(msg, Mapping) and msg.get("type") == METRICS_MESSAGE:
            step = msg.get("step", step)
            values.update(msg.get("metrics") or {})
    return step, values


def stage_result_message(custom_messages: Sequence[Any]) -> Mapping[str, Any] | None:
    for msg in reversed(list(custom_messages)):
        if isinstance(msg, Mapping) and msg.get("type") == RESULT_MESSAGE:
            return msg
    return None


def error_message(custom_messages: Sequence[Any]) -> str | None:
    """The traceback a failing stage sent before exiting, if it got that far."""
    for msg in reversed(list(custom_messages)):
        if isinstance(msg, Mapping) and msg.get("type") == ERROR_MESSAGE:
            return str(msg.get("error", ""))
    return None


def build_result(
    stage: str,
    reported: Sequence[Any],
    custom_messages: Sequence[Any],
    launcher_metadata: Mapping[str, Any],
) -> dg.MaterializeResult:
    """One MaterializeResult: stage metadata + data_version from Pipes, then metric last values,
    then the launcher's own figures. Raises StageLaunchError if the stage reported nothing."""
    materializations = [r for r in reported if isinstance(r, dg.MaterializeResult)]
    result_msg = stage_result_message(custom_messages)
    if result_msg is not None:
        # The raw stats (rather than Pipes' inferred metadata), rendered the same way an
        # in-process asset renders them: numbers plot, row lists become tables.
        metadata: dict[str, Any] = to_metadata(dict(result_msg.get("stats") or {}))
        data_version = dg.DataVersion(result_msg["content_hash"])
    elif materializations and materializations[-1].data_version is not None:
        metadata = dict(materializations[-1].metadata or {})
        data_version = materializations[-1].data_version
    else:
        raise StageLaunchError(
            f"stage {stage!r} exited cleanly but reported no result over Dagster Pipes; its CLI "
            "main() must wrap the run in wikigpt_core.pipes_bridge.stage_reporter and call "
            "rep.report(result)")
    metadata.setdefault("content_hash", data_version.value)
    step, metrics = last_metrics(custom_messages)
    for key, value in metrics.items():
        metadata.setdefault(f"last/{key}", value)
    if step is not None:
        metadata.setdefault("last_step", step)
    metadata.update(launcher_metadata)
    return dg.MaterializeResult(metadata=metadata, data_version=data_version)

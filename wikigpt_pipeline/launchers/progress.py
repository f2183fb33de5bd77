"""A launched stage's metric messages as console progress lines (wikigpt.progress, which
`wikigpt run` prints), the same for a local subprocess and a rented GPU's log stream."""
from __future__ import annotations

from typing import Sequence


def show_progress(message: dict, meter) -> None:
    """A stage's metric messages as a progress line every few seconds (wikigpt.progress;
    `wikigpt run` prints it); `meter` is the stage's ProgressMeter."""
    from wikigpt_core.pipes_bridge import METRICS_MESSAGE

    if meter is None or not isinstance(message, dict) or message.get("method") != "report_custom_message":
        return
    payload = (message.get("params") or {}).get("payload")
    if isinstance(payload, dict) and payload.get("type") == METRICS_MESSAGE:
        from wikigpt_pipeline.factory import PROGRESS

        line = meter.update(payload.get("metrics") or {}, int(payload.get("step", 0)))
        if line:
            PROGRESS.info(line)


def progress_meter(stage: str, cli_args: Sequence[str]):
    """The stage's ProgressMeter, its total from the spec file the args name (if any)."""
    from wikigpt_core.pipes_bridge import ProgressMeter, spec_planned_steps

    args = [str(a) for a in cli_args]
    spec = args[args.index("--spec") + 1] if "--spec" in args[:-1] else None
    return ProgressMeter(stage, spec_planned_steps(spec) if spec else None)

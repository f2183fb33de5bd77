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

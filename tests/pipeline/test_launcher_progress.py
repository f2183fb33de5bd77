"""A rented GPU's stage reports metrics as Pipes messages in its job log; the log-stream reader
turns them into the same console progress lines as a local subprocess (wikigpt.progress)."""
from __future__ import annotations

import json
import logging

from wikigpt_core.pipes_bridge import METRICS_MESSAGE
from wikigpt_pipeline.launchers.log_stream import LogStreamMessageReader
from wikigpt_pipeline.progress import StageProgress


class _Handler:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)


def _pipes_line(step: int, loss: float) -> str:
    message = {"__dagster_pipes_version": "0.1", "method": "report_custom_message",
               "params": {"payload": {"type": METRICS_MESSAGE, "step": step,
                                      "metrics": {"loss/train": loss, "tps": 900.0, "steps/total": 10}}}}
    return "(worker) " + json.dumps(message)


def test_job_log_metrics_become_progress_lines(caplog, capsys):
    reader = LogStreamMessageReader()
    reader.progress = StageProgress("base_checkpoint")
    handler = _Handler()
    with caplog.at_level(logging.INFO, logger="wikigpt.progress"):
        with reader.read_messages(handler):
            reader.feed_line("setting up the box")
            reader.feed_line(_pipes_line(1, 8.3))
            reader.feed_line(_pipes_line(10, 6.1))
    lines = [r.getMessage() for r in caplog.records if r.name == "wikigpt.progress"]
    assert len(lines) == 2, lines  # the first step, and the last (always shown)
    assert "step 1/10" in lines[0] and "loss 8.3000" in lines[0]
    assert "step 10/10 100%" in lines[1] and "ETA 0s" in lines[1]
    assert len(handler.messages) == 2  # Dagster still gets every message
    assert "setting up the box" in capsys.readouterr().out  # other log lines are echoed

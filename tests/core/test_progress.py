"""The training progress line `wikigpt run` / `refresh` print (wikigpt.progress): step/total,
loss, tok/s and an ETA, at most every few seconds, fed by the metric calls the training loops
make (through the stage reporter, or the Pipes messages of a launched stage)."""
from __future__ import annotations

import re

from wikigpt_core.pipes_bridge import (PROGRESS_EVERY_S, ProgressMeter, format_duration,
                                       format_progress)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _row(loss: float, tps: float = 1955.0, step_ms: float = 520.0) -> dict:
    """The keys a training log row carries (wikigpt_core.train.trainer._account)."""
    return {"loss/train": loss, "grad_norm": 0.7, "lr": 2e-3, "tps": tps, "time/step_ms": step_ms,
            "tokens": 1024}


def test_the_line_carries_step_total_loss_tokens_per_second_and_eta():
    line = format_progress("base_checkpoint", 120, 300, 4.21301, 1234.4, 151, val_loss=4.3012, val_step=100)
    assert line.startswith("base_checkpoint      ")
    assert "[########............] step 120/300  40%" in line
    assert "loss 4.2130 (val@100 4.3012)" in line
    assert "1,234 tok/s" in line
    assert line.endswith("ETA 2m31s")


def test_meter_pace_gives_the_eta_and_lines_come_every_few_seconds():
    clock = Clock()
    meter = ProgressMeter("base_checkpoint", total=300, clock=clock)
    first = meter.update(_row(8.354, step_ms=500.0), 1)
    assert first is not None and "step 1/300" in first
    assert "ETA 2m30s" in first  # no pace yet: 299 steps at the loop's 500 ms per step

    clock.t += PROGRESS_EVERY_S / 2
    assert meter.update(_row(7.9), 10) is None  # too soon after the last line
    assert meter.update({"loss/val": 6.559, "ppl/val": 705.5}, 10) is None  # eval rows never print

    clock.t = 1000.0 + 99.0  # 99 steps in 99 s of wall clock: 1 step/s
    line = meter.update(_row(6.599, tps=1955.2), 100)
    assert re.search(r"step 100/300 +33%", line), line
    assert "loss 6.5990 (val@10 6.5590)" in line
    assert "1,955 tok/s" in line
    assert "ETA 3m20s" in line  # 200 steps left at the measured pace

    clock.t += 0.1
    last = meter.update(_row(6.0), 300)  # the last step always prints
    assert last is not None and "step 300/300 100%" in last and "ETA 0s" in last
    assert "[" + "#" * 20 + "]" in last
    # the validation after the last step comes as its own row: it gets a line too
    final = meter.update({"loss/val": 5.95, "ppl/val": 383.0}, 300)
    assert final is not None and "loss 6.0000 (val@300 5.9500)" in final


def test_data_rows_and_an_unknown_total():
    clock = Clock()
    meter = ProgressMeter("sft_checkpoint", total=None, clock=clock)
    # SFT reports its packing statistics at step 0: no loss, no line
    assert meter.update({"sft/loss_fraction": 0.09, "sft/examples": 520}, 0) is None
    line = meter.update(_row(5.7), 1)
    assert "step 1/?" in line and "loss 5.7000" in line and line.endswith("ETA ?")
    # the trainer's rows carry its step count (an epochs-based run knows it once the data is
    # packed): from then on the line has a total and an ETA
    clock.t += 10
    line = meter.update({**_row(5.6), "steps/total": 40}, 2)
    assert "step 2/40" in line and "ETA ?" not in line


def test_durations():
    assert [format_duration(s) for s in (0, 42.4, 151, 3600 * 22 + 5 * 60)] == ["0s", "42s", "2m31s", "22h05m"]

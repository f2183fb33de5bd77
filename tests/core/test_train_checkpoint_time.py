"""Time-based checkpoints: besides every `ckpt_interval` steps, training checkpoints once
`ckpt_minutes` of wall time passed since the last save (checked on log steps, agreed by all
ranks), so a preemption loses about that much whatever the step time."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.core.test_train_resume import Crash, crash_at
from tests.core.train_support import make_shards, make_tokenizer, micro_model, micro_train, single_thread  # noqa: F401
from wikigpt_core.pretrain import run_pretrain
from wikigpt_core.train.checkpoint import Checkpointer
from wikigpt_core.train.config import key_payload

pytestmark = pytest.mark.usefixtures("single_thread")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_clock_rule_counts_from_the_last_save(tmp_path):
    from wikigpt_core.model import GPT

    clock = FakeClock()
    ck = Checkpointer(tmp_path, "k" * 16, interval=500, keep_last_k=2, minutes=1, clock=clock)
    clock.now += 59
    assert not ck.clock_due()
    clock.now += 1
    assert ck.clock_due()
    assert ck.due(7, final=False, clock_due=True) and not ck.due(7, final=False)
    model = GPT(micro_model())
    ck.save(7, model, torch.optim.AdamW(model.parameters()), {"data_position": 7})
    assert not ck.clock_due()  # the save restarted the clock
    clock.now += 60
    assert ck.clock_due()


def test_zero_minutes_turns_the_clock_off_and_negative_is_refused(tmp_path):
    clock = FakeClock()
    ck = Checkpointer(tmp_path, "k" * 16, interval=500, keep_last_k=2, minutes=0, clock=clock)
    clock.now += 10 ** 9
    assert not ck.clock_due()
    with pytest.raises(ValueError, match="ckpt_minutes"):
        Checkpointer(tmp_path, "k" * 16, interval=500, keep_last_k=2, minutes=-1)


def test_ckpt_minutes_does_not_change_the_run_key():
    a = key_payload("pretrain", micro_model(), micro_train(ckpt_minutes=10), {})
    b = key_payload("pretrain", micro_model(), micro_train(ckpt_minutes=0.5), {})
    assert a == b


def test_checkpoints_by_time_come_before_the_step_interval_and_resume_exactly(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    shards, mcfg = make_shards(tmp_path / "shards", tok), micro_model(tok.vocab_size)
    # The step interval is never reached; a clock of 60 microseconds has always run out by the
    # next log step (step 1, then every 2 steps), so only the time rule writes checkpoints 1-4.
    cfg = micro_train(max_steps=6, ckpt_interval=1000, ckpt_minutes=1e-6, log_interval=2, keep_last_k=5)
    work = tmp_path / "work"
    with pytest.raises(Crash):
        run_pretrain(mcfg, cfg, shards, tmp_path / "out", work, on_metrics=crash_at(6))  # a log step, before its save
    assert sorted(p.name for p in work.glob("*/ckpt-*")) == ["ckpt-00000001", "ckpt-00000002",
                                                                 "ckpt-00000004"]

    resumed = run_pretrain(mcfg, cfg, shards, tmp_path / "out", work)
    assert resumed.stats["checkpoints_saved"] == 1  # step 6: by time and as the final one
    plain = run_pretrain(mcfg, micro_train(max_steps=6, ckpt_interval=1000, ckpt_minutes=0, log_interval=2),
                         shards, tmp_path / "plain", tmp_path / "work_plain")
    assert plain.stats["checkpoints_saved"] == 1  # the final one only
    a, b = weights(plain.path), weights(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a)  # saving by time changes nothing trained


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))

"""The kernel settings (`compile_mode`, `attention`): validated, recorded, outside the run key,
and each compile mode trains to the eager loss on the micro model (compiled on CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.core.train_support import micro_model, micro_train, single_thread  # noqa: F401 (fixture)
from wikigpt_core.config import TrainConfig
from wikigpt_core.model import GPT
from wikigpt_core.train.checkpoint import run_key
from wikigpt_core.train.config import key_payload
from wikigpt_core.train.metrics import MetricLogger
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.runtime import TORCH_COMPILE_MODES, Runtime, attention_context, sdpa_order
from wikigpt_core.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = Runtime(torch.device("cpu"))


class Windows:
    def __init__(self, vocab: int, rows: int = 2, length: int = 16):
        self.vocab, self.rows, self.length = vocab, rows, length

    def batch(self, step: int, micro: int):
        g = torch.Generator().manual_seed(step * 10 + micro)
        x = torch.randint(0, self.vocab, (self.rows, self.length + 1), generator=g)
        return {"idx": x[:, :-1], "targets": x[:, 1:]}


def losses(**settings) -> list[float]:
    torch.manual_seed(0)
    cfg = micro_model()
    train = micro_train(max_steps=2, grad_accum=1, warmup_steps=0, precision="fp32", **settings)
    trainer = Trainer(GPT(cfg), LMObjective(), Windows(cfg.vocab_size), train, CPU, max_steps=2,
                      checkpointer=None, logger=MetricLogger(None))
    return [float(trainer.train_step(step)[0]["loss/train"]) for step in range(2)]


@pytest.mark.parametrize("mode", TORCH_COMPILE_MODES)
def test_each_compile_mode_trains_to_the_eager_loss(mode):
    eager = losses(compile="off")
    compiled = losses(compile="on", compile_mode=mode)
    assert compiled == pytest.approx(eager, abs=1e-4), (mode, compiled, eager)
    assert eager[1] != eager[0]  # the second step saw the first update


def test_settings_are_validated_and_outside_the_run_key():
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="reduce-overhead")  # CUDA graphs: inputs change every step
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="fa3")
    base = TrainConfig()
    key = run_key(key_payload("pretrain", micro_model(), base, {}))
    tuned = dataclasses.replace(base, compile_mode="max-autotune-no-cudagraphs", attention="cudnn")
    assert run_key(key_payload("pretrain", micro_model(), tuned, {})) == key  # resumable across them


def test_attention_preference_orders_sdpa_backends():
    cuda = torch.device("cuda", 0)
    assert sdpa_order("flash", cuda) == ["flash", "cudnn", "efficient", "math"]
    assert sdpa_order("math", cuda)[0] == "math" and len(sdpa_order("math", cuda)) == 4
    assert sdpa_order("cudnn", torch.device("cpu")) == []  # CPU: torch's own choice
    with pytest.raises(ValueError, match="attention must be one of"):
        sdpa_order("fa3", cuda)
    with attention_context("auto", torch.device("cpu")):
        pass  # a no-op off CUDA

"""CUDA-only checks of the GPU training path (marker `gpu`; skipped without a GPU, run by
`benchmarks/gpu_check.py`):

- causal bf16 attention of the model goes to SDPA's flash kernel;
- the Trainer's AdamW is the fused CUDA kernel;
- one optimizer step of the 124m model at micro-batch 16 x 1,024 in the real run's precision
  (bf16 autocast over float32 weights) peaks under the 24 GB of an RTX 4090. Measured eager:
  torch.compile's fusion only lowers the peak.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from wikigpt_core.config import load_settings
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.train.metrics import MetricLogger
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.runtime import Runtime
from wikigpt_core.train.trainer import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GB = 1024 ** 3
RTX4090_BYTES = 24 * GB


class NoCheckpoints:
    def due(self, step, final):
        return False

    def load_latest(self, model, optimizer):
        return None


class RandomTokens:
    def __init__(self, vocab: int, batch: int, seq: int):
        self.vocab, self.batch_size, self.seq = vocab, batch, seq

    def batch(self, step: int, micro: int):
        g = torch.Generator().manual_seed(step * 1000 + micro)
        x = torch.randint(0, self.vocab, (self.batch_size, self.seq + 1), generator=g)
        return {"idx": x[:, :-1], "targets": x[:, 1:]}


def cuda_runtime() -> Runtime:
    return Runtime(torch.device("cuda", torch.cuda.current_device()))


def trainer_for(model_cfg: GPTConfig, batch: int, seq: int, **train) -> Trainer:
    cfg = dataclasses.replace(load_settings("124m", env=False).pretrain, batch_size=batch, grad_accum=1,
                              warmup_steps=1, **train)
    torch.manual_seed(0)
    return Trainer(GPT(model_cfg), LMObjective(), RandomTokens(model_cfg.vocab_size, batch, seq), cfg,
                   cuda_runtime(), max_steps=10, checkpointer=NoCheckpoints(), logger=MetricLogger(None))


def test_causal_bf16_attention_uses_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    cfg = GPTConfig(vocab_size=32_768, block_size=1_024, n_layer=2, n_head=12, n_embd=768)
    model = GPT(cfg).cuda().train()
    idx = torch.randint(0, cfg.vocab_size, (4, 1_024), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot take this call
            model(idx, idx)[1].backward()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(idx, idx)  # unrestricted: SDPA's own choice
            torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    assert any("flash" in n.lower() for n in names), sorted(n for n in names if "attention" in n.lower())


def test_trainer_uses_fused_adamw_on_cuda():
    cfg = GPTConfig(vocab_size=4_096, block_size=256, n_layer=2, n_head=4, n_embd=256)
    trainer = trainer_for(cfg, batch=2, seq=256, compile="off")
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.runtime.autocast_dtype == torch.bfloat16  # auto on CUDA
    metrics, _ = trainer.train_step(0)
    assert torch.isfinite(metrics["loss/train"])
    assert all(s["step"].device.type == "cuda" for s in trainer.optimizer.state.values())  # fused keeps steps on device


def test_124m_micro_batch_16x1024_peaks_under_24_gb():
    settings = load_settings("124m", env=False)
    assert settings.pretrain.batch_size == 16 and settings.model.block_size == 1_024
    trainer = trainer_for(settings.model, batch=16, seq=1_024, compile="off", precision="auto")
    torch.cuda.reset_peak_memory_stats()
    for step in range(2):  # the second step includes AdamW's state, allocated at the first
        metrics, _ = trainer.train_step(step)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    print(f"124m 16x1024 bf16 eager peak: {peak / GB:.2f} GB")
    assert torch.isfinite(metrics["loss/train"])
    assert peak < RTX4090_BYTES, f"{peak / GB:.2f} GB"

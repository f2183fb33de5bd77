"""CUDA-only checks of the GPU training path (marker `gpu`; skipped without a GPU, run by
`benchmarks/gpu_check.py`, which runs them on a bare GPU machine: no dagster, torch 2.11+):

- causal bf16 attention of the model runs SDPA's flash kernel, named by its exact aten op
  (cuDNN's when this torch ranks cuDNN attention first);
- the Trainer's AdamW is the fused CUDA kernel;
- one optimizer step of the 124m model at micro-batch 16 x 1,024 in the real run's precision
  (bf16 autocast over float32 weights) fits the 24 GiB of an RTX 4090 with what the card must
  hold besides: the allocator's peak reserve plus memory outside it (the CUDA context,
  cuBLAS workspaces), measured. Eager: torch.compile's fusion only lowers the peak;
- compiled training follows eager training step by step on CUDA (same weights, same batches);
- a run checkpointed at step k and resumed in a fresh Trainer continues with the losses of
  the uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from wikigpt_core.config import load_settings
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.train.checkpoint import Checkpointer, run_key
from wikigpt_core.train.metrics import MetricLogger
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.runtime import Runtime
from wikigpt_core.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_check import SDPA_OPS, LMData, memory_figures, no_checkpoints, sdpa_backends  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GIB = 1024 ** 3
SMALL = GPTConfig(vocab_size=4_096, block_size=256, n_layer=2, n_head=4, n_embd=256)
# bf16 keeps 8 mantissa bits; compiled fusion rounds in other places than eager. Measured on
# CPU the per-step deltas of the mean loss are ~1e-5; a wrong graph moves it by far more.
COMPILED_TOL = 0.02
# A resumed run repeats the same kernels on the same inputs; atomics in the embedding backward
# may change the last bits of a gradient, nothing more.
RESUME_TOL = 1e-3


def cuda_runtime() -> Runtime:
    return Runtime(torch.device("cuda", torch.cuda.current_device()))


def trainer_for(model_cfg: GPTConfig, batch: int, seq: int, *, seed: int = 0, checkpointer=None,
                max_steps: int = 10, **train) -> Trainer:
    cfg = dataclasses.replace(load_settings("124m", env=False).pretrain, batch_size=batch, grad_accum=1,
                              warmup_steps=1, log_interval=1, **train)
    torch.manual_seed(seed)
    return Trainer(GPT(model_cfg), LMObjective(), LMData(model_cfg.vocab_size, batch, seq), cfg,
                   cuda_runtime(), max_steps=max_steps, checkpointer=checkpointer or no_checkpoints(),
                   logger=MetricLogger(None))


def preferred_fused_backend() -> str:
    """"cudnn" when this torch ranks cuDNN attention before flash (a private API: guarded)."""
    from torch.nn.attention import SDPBackend

    order = getattr(torch._C, "_get_sdp_priority_order", lambda: [])()
    ranks = {int(b): i for i, b in enumerate(order)}
    cudnn, flash = ranks.get(int(SDPBackend.CUDNN_ATTENTION)), ranks.get(int(SDPBackend.FLASH_ATTENTION))
    cudnn_on = torch.backends.cuda.cudnn_sdp_enabled()
    return "cudnn" if cudnn_on and cudnn is not None and flash is not None and cudnn < flash else "flash"


def test_causal_bf16_attention_uses_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    cfg = GPTConfig(vocab_size=32_768, block_size=1_024, n_layer=2, n_head=12, n_embd=768)
    model = GPT(cfg).cuda().train()
    idx = torch.randint(0, cfg.vocab_size, (4, 1_024), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot take this call
            model(idx, idx)[1].backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(idx, idx)  # unrestricted: SDPA's own choice
            torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    expected = preferred_fused_backend()
    assert sdpa_backends(names) == [expected], sorted(n for n in names if "attention" in n.lower())
    assert SDPA_OPS[expected] in names


def test_trainer_uses_fused_adamw_on_cuda():
    trainer = trainer_for(SMALL, batch=2, seq=256, compile="off")
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.runtime.autocast_dtype == torch.bfloat16  # auto on CUDA
    metrics, _ = trainer.train_step(0)
    assert torch.isfinite(metrics["loss/train"])
    assert all(s["step"].device.type == "cuda" for s in trainer.optimizer.state.values())  # fused keeps steps on device


def test_124m_micro_batch_16x1024_fits_a_24_gib_card():
    settings = load_settings("124m", env=False)
    assert settings.pretrain.batch_size == 16 and settings.model.block_size == 1_024
    trainer = trainer_for(settings.model, batch=16, seq=1_024, compile="off", precision="auto")
    torch.cuda.empty_cache()  # what earlier tests cached is not this run's reserve
    torch.cuda.reset_peak_memory_stats()
    for step in range(2):  # the second step includes AdamW's state, allocated at the first
        metrics, _ = trainer.train_step(step)
    torch.cuda.synchronize()
    mem = memory_figures(trainer.runtime.device)
    print(f"124m 16x1024 bf16 eager: {mem}")
    assert torch.isfinite(metrics["loss/train"])
    assert mem["outside_allocator_gib"] > 0  # the context is counted, not assumed away
    assert mem["peak_total_gib"] < 24, mem


def test_compiled_training_follows_eager_on_cuda():
    steps = 4
    runs = {}
    for mode in ("off", "on"):
        trainer = trainer_for(SMALL, batch=4, seq=256, compile=mode)
        assert trainer.compiled == (mode == "on")
        runs[mode] = [float(trainer.train_step(s)[0]["loss/train"]) for s in range(steps)]
    eager, compiled = runs["off"], runs["on"]
    assert eager[-1] < eager[0] - 0.05, eager  # it learned: the comparison is not of two uniform models
    assert all(abs(c - e) <= COMPILED_TOL for c, e in zip(compiled, eager)), (compiled, eager)


class Preempted(RuntimeError):
    pass


class PreemptedAfterSave(Checkpointer):
    """Saves like the real one, then the run dies (a preemption right after a checkpoint)."""

    def save(self, step, model, optimizer, extra):
        path = super().save(step, model, optimizer, extra)
        raise Preempted(f"preempted after the checkpoint at step {step}")


def losses(logger: MetricLogger) -> dict[int, float]:
    return {r["step"]: r["loss/train"] for r in logger.history if "loss/train" in r}


def test_cuda_save_and_resume_continues_the_uninterrupted_run(tmp_path):
    total, at = 5, 2
    straight = trainer_for(SMALL, batch=4, seq=256, compile="off", max_steps=total)
    straight.train()
    key = run_key({"test": "cuda resume"})
    first = trainer_for(SMALL, batch=4, seq=256, compile="off", max_steps=total,
                        checkpointer=PreemptedAfterSave(tmp_path, key, interval=at, keep_last_k=2))
    with pytest.raises(Preempted):
        first.train()
    # Another init seed: only the checkpoint can make it continue the same run.
    resumed = trainer_for(SMALL, batch=4, seq=256, compile="off", max_steps=total, seed=1,
                          checkpointer=Checkpointer(tmp_path, key, interval=100, keep_last_k=2))
    resumed.train()
    want, got = losses(straight.logger), losses(resumed.logger)
    assert sorted(got) == list(range(at + 1, total + 1))
    assert all(abs(got[s] - want[s]) <= RESUME_TOL for s in got), (got, want)
    assert abs(want[at + 1] - want[1]) > 10 * RESUME_TOL  # losses move: a fresh model would not match

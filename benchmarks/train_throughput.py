"""Training throughput of the real engine (Trainer.train_step), and KV-cache decode speed.

    python benchmarks/train_throughput.py                     # CPU: tiny and 124m
    python benchmarks/train_throughput.py --profiles 124m --batch 16 --steps 20   # on a GPU

For each profile it times optimizer steps on random tokens in two modes measured in the same
run and prints their ratio:
  baseline: float32, eager, unfused AdamW (what the course's CPU path does);
  engine:   the engine's own choice: on CUDA bf16 autocast + torch.compile + flash SDPA +
            fused AdamW; on CPU float32 eager (pass --compile to try torch.compile on CPU).
It prints tokens/s, and MFU when the GPU's dense bf16 peak is known (H100 989, H200 989,
A100 312, RTX 4090 165 TFLOP/s). FLOPs per token = 6N + 12 * n_layer * n_embd * seq_len
(N counts the tied head once; the second term is attention's QK^T and AV, fwd + bwd).
On CUDA it also prints peak memory (torch.cuda.max_memory_allocated).

`--decode` adds greedy generation tokens/s with and without the KV cache (and their ratio).

124m on a 24 GB RTX 4090, worked estimate (micro-batch 16 x 1,024 = 16,384 tokens, bf16
autocast over float32 master weights, fused AdamW, flash attention; eager, i.e. without the
savings torch.compile's fusion brings):
  static: weights fp32 110.1 M x 4 B = 0.44 GB; gradients 0.44 GB; AdamW m + v 0.88 GB;
    bf16 weight casts held by autocast ~0.22 GB                          -> ~2.0 GB
  activations saved for backward, per token per layer (C = 768, H = 2,048; the residual
    stream is float32 under autocast, matmul inputs/outputs bf16):
    2 RMSNorms (fp32 input + fp32 normalised product) 2 x 8C; qkv input 2C; q, k, v and the
    attention output 8C; proj input 2C; gate and up inputs 4C; gate out, silu*up operands and
    down input 8H  ->  32C + 8H = 24,576 + 16,384 B = ~41 KB
    x 12 layers x 16,384 tokens                                          -> ~8.1 GB
  logits: 16,384 x 32,768 fp32 log-softmax kept for backward (2.15 GB) and, in backward, its
    gradient (2.15 GB) plus the bf16 gradient into the head (1.07 GB)    -> ~5.4 GB peak
  total ~ 2.0 + 8.1 + 5.4 = ~15.5 GB, plus the CUDA context and allocator slack (~1.5 GB):
  ~17 GB < 24 GB. Micro-batch 16 fits with ~7 GB to spare; 32 would need ~30 GB, hence
  16 x 32 accumulation for 524,288 tokens per optimizer step. (On a GPU this script prints
  the measured torch.cuda.max_memory_allocated next to tokens/s.)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wikigpt_core.config import load_settings  # noqa: E402
from wikigpt_core.model import GPT  # noqa: E402
from wikigpt_core.train.metrics import MetricLogger, flops_per_token, gpu_peak_flops  # noqa: E402
from wikigpt_core.train.objectives import LMObjective  # noqa: E402
from wikigpt_core.train.runtime import Runtime, setup_runtime  # noqa: E402
from wikigpt_core.train.trainer import Trainer  # noqa: E402


class RandomTokens:
    def __init__(self, vocab: int, batch: int, seq: int):
        self.vocab, self.rows, self.seq = vocab, batch, seq

    def batch(self, step: int, micro: int):
        g = torch.Generator().manual_seed(step * 1000 + micro)
        x = torch.randint(0, self.vocab, (self.rows, self.seq + 1), generator=g)
        return {"idx": x[:, :-1], "targets": x[:, 1:]}


class NoCheckpoints:
    def due(self, step, final):
        return False

    def load_latest(self, model, optimizer):
        return None


class FP32Runtime(Runtime):
    """The baseline: no autocast, unfused optimizer (Runtime.is_cuda drives both)."""

    def autocast(self):
        return contextlib.nullcontext()


def time_steps(trainer: Trainer, warmup: int, steps: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    for s in range(warmup):
        trainer.train_step(s)
    sync()
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        trainer.train_step(s)
    sync()
    return (time.perf_counter() - t0) / steps


def measure(profile: str, mode: str, args, runtime: Runtime) -> dict:
    settings = load_settings(profile)
    mcfg = settings.model
    seq = args.seq or mcfg.block_size
    batch = args.batch or (16 if runtime.is_cuda else (4 if profile == "tiny" else 1))
    compile_mode = "on" if (mode == "engine" and (runtime.is_cuda or args.compile)) else "off"
    cfg = dataclasses.replace(settings.pretrain, batch_size=batch, grad_accum=1, compile=compile_mode,
                              warmup_steps=1, max_steps=10_000)
    rt = runtime
    if mode == "baseline":
        rt = FP32Runtime(device=runtime.device)
        if runtime.is_cuda:  # unfused AdamW: pretend not CUDA only for the optimizer choice
            rt = _UnfusedCuda(device=runtime.device)
    torch.manual_seed(0)
    model = GPT(mcfg)
    trainer = Trainer(model, LMObjective(), RandomTokens(mcfg.vocab_size, batch, seq), cfg, rt,
                      max_steps=10_000, checkpointer=NoCheckpoints(), logger=MetricLogger(None))
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup = args.warmup if compile_mode == "off" else max(args.warmup, 3)
    dt = time_steps(trainer, warmup, args.steps, runtime.device)
    tps = batch * seq / dt
    out = {"profile": profile, "mode": mode, "batch": batch, "seq": seq, "step_s": dt, "tps": tps}
    fpt = flops_per_token(model.num_params(), mcfg.n_layer, mcfg.n_embd, seq)
    out["tflops"] = tps * fpt / 1e12
    if runtime.is_cuda:
        peak = gpu_peak_flops(torch.cuda.get_device_name(runtime.device))
        out["mfu"] = tps * fpt / peak if peak else None
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    del trainer, model
    if runtime.is_cuda:
        torch.cuda.empty_cache()
    return out


class _UnfusedCuda(Runtime):
    """CUDA baseline: float32 (no autocast) and the plain for-each AdamW."""

    def autocast(self):
        return contextlib.nullcontext()

    @property
    def is_cuda(self) -> bool:  # read by build_optimizer (fused) and should_compile
        return False


def decode_speed(profile: str, runtime: Runtime, new_tokens: int) -> None:
    settings = load_settings(profile)
    torch.manual_seed(0)
    model = GPT(settings.model).to(runtime.device).eval()
    prompt = torch.randint(0, settings.model.vocab_size, (1, 64), device=runtime.device)
    res = {}
    for use_cache in (False, True):
        with runtime.autocast():
            model.generate(prompt, 4, temperature=0, use_cache=use_cache)
            t0 = time.perf_counter()
            model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
            if runtime.is_cuda:
                torch.cuda.synchronize()
        res[use_cache] = new_tokens / (time.perf_counter() - t0)
    print(f"{profile:>5} decode  no-cache {res[False]:9.1f} tok/s   kv-cache {res[True]:9.1f} tok/s   "
          f"ratio {res[True] / res[False]:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", default="tiny,124m")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: 16 on GPU; CPU tiny 4, 124m 1)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: block_size)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also compile on CPU in engine mode")
    p.add_argument("--modes", default="baseline,engine")
    p.add_argument("--decode", type=int, default=0, help="also time N greedy decode tokens")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    runtime = setup_runtime(args.device)
    name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else "cpu"
    print(f"device: {name}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    for profile in args.profiles.split(","):
        rows = {m: measure(profile, m, args, runtime) for m in args.modes.split(",")}
        for r in rows.values():
            extra = ""
            if r.get("mfu") is not None:
                extra += f"  MFU {100 * r['mfu']:.1f}%"
            if "peak_mem_gb" in r:
                extra += f"  peak mem {r['peak_mem_gb']:.1f} GB"
            print(f"{profile:>5} {r['mode']:>8}  batch {r['batch']} x {r['seq']}  {r['tps']:10.1f} tok/s  "
                  f"{r['tflops']:.3f} TFLOP/s{extra}")
        if "baseline" in rows and "engine" in rows:
            print(f"{profile:>5} engine/baseline tokens/s ratio: {rows['engine']['tps'] / rows['baseline']['tps']:.2f}x")
        if args.decode:
            decode_speed(profile, runtime, args.decode)


if __name__ == "__main__":
    main()

"""The GPU figures in one call (default deadline 8 minutes), written as JSON phase by phase.

On a bare GPU machine, as a vendor image ships it (Python 3.12, torch 2.11 or newer with CUDA,
numpy, pyarrow, tokenizers, safetensors, transformers and pytest; no dagster, no package
index), from a plain copy of the repository and with no install step:

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out DIR
    python benchmarks/gpu_check.py --out DIR --dry-run   # anywhere: the wiring on CPU, no figures

Nothing has to be carried as a wheel: the path it runs imports torch, numpy, safetensors,
tokenizers and pytest only (the vLLM phase also imports vLLM's own dependencies, and runs only
where vLLM is installed). Dagster is never imported: the test conftest imports it lazily.

Phases, each in its own child process (`--phase NAME`), so an out-of-memory or CUDA error
loses that phase only; DIR/gpu_check.json is rewritten after every phase, with the phase's
figures or its error and the tail of its stderr:

1. tests: `pytest -m gpu tests/core/test_train_compile_gpu.py`;
2. calibration: a bf16 8192^3 matmul, the measured ceiling MFU is also given against;
3. pretrain: 124m at 16 x 1,024, the real Trainer in the run's settings (bf16 autocast,
   torch.compile, fused AdamW), grad_accum 4;
4. sft_packed: the same on document-masked packed blocks (the real packer);
5. dpo: DPO steps on the reference's stored log-probabilities (one pass before training; the step
   runs the policy alone);
6. decode: batched greedy generation through wikigpt_core.generation;
7. vllm: whether the tiny release loads and generates in vLLM, when vLLM is installed.

Training phases compile and run 1 + 3 warm steps, then time 20 steps with CUDA events, and
report tokens/s, MFU against the datasheet peak (wikigpt_core.train.metrics.GPU_PEAKS) and the
measured ceiling (PaLM FLOPs, 6N + 12 L H Q T), max_memory_allocated/reserved plus memory
outside the allocator (the CUDA context), the SDPA kernel each used (by its aten op name), and
dynamo's graph, recompile and graph-break counts. Sanity checks (each with expected, got, ok):
the untrained loss is ln(vocab) +- 0.5, DPO's step-0 loss is ln 2, compiled and eager losses
agree, and a document-masked block's loss equals its examples' losses run alone.

A phase that would not finish before the deadline (`--deadline-s`) is skipped with
"deadline" as its reason. Exit status: 0 when no phase failed and every sanity check holds,
1 otherwise (the JSON is written either way), 2 without CUDA unless --dry-run. --dry-run runs
every phase on CPU with micro shapes and 1-2 steps and marks the JSON dry_run.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wikigpt_core.chat import IGNORE_INDEX  # noqa: E402
from wikigpt_core.config import load_settings  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402
from wikigpt_core.train.checkpoint import Checkpointer  # noqa: E402
from wikigpt_core.train.metrics import MetricLogger, flops_per_token, gpu_peak_flops  # noqa: E402
from wikigpt_core.train.objectives import DPOObjective, LMObjective, reference_logps  # noqa: E402
from wikigpt_core.train.runtime import setup_runtime  # noqa: E402
from wikigpt_core.train.trainer import Trainer  # noqa: E402

REPORT_FILE = "gpu_check.json"
GIB = 1024 ** 3
STDERR_TAIL_CHARS = 3_000
DPO_BETA = 0.1
# The aten op each SDPA backend dispatches to (forward); the profiler names them exactly.
SDPA_OPS = {
    "flash": "aten::_scaled_dot_product_flash_attention",
    "cudnn": "aten::_scaled_dot_product_cudnn_attention",
    "efficient": "aten::_scaled_dot_product_efficient_attention",
    "flash_cpu": "aten::_scaled_dot_product_flash_attention_for_cpu",
    "math": "aten::_scaled_dot_product_attention_math",
}
# Goals for the figures on an H100/H200 (not checks: a miss is reported, not failed).
PRETRAIN_MFU_GOAL = 0.5
SFT_SHARE_GOAL = 0.9
DPO_PER_TOKEN_GOAL = 1.2
STAGE_MEMORY_GOAL_GIB = 20.0


# ---------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Setup:
    """What the phases run: the 124m figures on CUDA, or micro shapes on CPU (--dry-run)."""

    dry: bool
    model: GPTConfig
    model_name: str
    seq: int
    grad_accum: int
    warm_steps: int
    timed_steps: int
    compile: str
    matmul_n: int
    decode_prompts: int
    decode_prompt_len: int
    decode_new_tokens: int
    budget_s: float = 0.0
    """Seconds this phase may take (the parent's deadline), for checks with their own timeout."""

    @property
    def timer(self) -> str:
        return "perf_counter" if self.dry else "cuda events"


def make_setup(dry: bool, budget_s: float = 0.0) -> Setup:
    if dry:
        micro = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32, mlp_multiple_of=16)
        return Setup(True, micro, "micro", seq=64, grad_accum=2, warm_steps=1, timed_steps=2, compile="off",
                     matmul_n=256, decode_prompts=3, decode_prompt_len=8, decode_new_tokens=4, budget_s=budget_s)
    return Setup(False, load_settings("124m", env=False).model, "124m", seq=1_024, grad_accum=4, warm_steps=3,
                 timed_steps=20, compile="on", matmul_n=8_192, decode_prompts=16, decode_prompt_len=128,
                 decode_new_tokens=128, budget_s=budget_s)


def stage_config(stage: str, setup: Setup):
    """The 124m profile's settings of a stage at the check's accumulation, compile and steps."""
    cfg = getattr(load_settings("124m", env=False), stage)
    batch = 2 if setup.dry else cfg.batch_size
    return dataclasses.replace(cfg, batch_size=batch, grad_accum=setup.grad_accum, warmup_steps=1,
                               compile=setup.compile, precision="auto")


# ---------------------------------------------------------------------------- data


class ZipfTokens:
    """Token ids drawn with p ~ 1 / (rank + 10): the model learns the unigram within a few
    steps, so the loss leaves ln(vocab) and the compiled-vs-eager check compares a model that
    has learned something, not a uniform one."""

    def __init__(self, vocab: int, first: int = 4):  # ids 0..3 are the specials
        ranks = torch.arange(vocab - first, dtype=torch.float64)
        self.probs, self.first = 1.0 / (ranks + 10.0), first

    def draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probs, n, replacement=True, generator=g) + self.first


def generator(step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(step * 1_000 + micro)


class LMData:
    """Pretraining micro-batches of (batch, seq) Zipf tokens, a pure function of (step, micro)."""

    def __init__(self, vocab: int, batch: int, seq: int):
        self.tokens, self.batch_size, self.seq = ZipfTokens(vocab), batch, seq

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        x = self.tokens.draw(self.batch_size * (self.seq + 1), generator(step, micro)).view(self.batch_size, -1)
        return {"idx": x[:, :-1], "targets": x[:, 1:]}


def packed_blocks(vocab: int, seq: int, blocks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """SFT blocks from the real packer: examples of seq/8 .. seq/2 tokens whose first third is
    prompt (no loss), packed with document ids, the tail padded as training pads it."""
    from wikigpt_core.tokenizer import END, SPECIAL_TOKENS
    from wikigpt_core.train.data import pack_examples

    g, tokens = torch.Generator().manual_seed(seed), ZipfTokens(vocab)
    examples = []
    while len(examples) < blocks * 4:
        n = int(torch.randint(seq // 8, seq // 2 + 1, (1,), generator=g))
        ids = tokens.draw(n, g).tolist()
        examples.append((ids, [IGNORE_INDEX] * (n // 3) + ids[n // 3:]))
    end = SPECIAL_TOKENS.index(END)
    packed, _ = pack_examples(examples, seq, pad_id=end, end_id=end)
    return packed


class PackedData:
    """Packed SFT micro-batches: rows of `packed_blocks`, cycled by (step, micro)."""

    def __init__(self, blocks: dict[str, torch.Tensor], batch: int, grad_accum: int):
        self.blocks, self.batch_size, self.grad_accum = blocks, batch, grad_accum

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        n = len(next(iter(self.blocks.values())))
        first = (step * self.grad_accum + micro) * self.batch_size
        rows = torch.arange(first, first + self.batch_size) % n
        return {k: v[rows] for k, v in self.blocks.items()}


def pair_pool(vocab: int, seq: int, pairs: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """DPO pairs of seq tokens, the first half prompt (no loss), as `pair_tensors` lays them out."""
    g, tokens, out = torch.Generator().manual_seed(seed), ZipfTokens(vocab), {}
    for side in ("chosen", "rejected"):
        idx = tokens.draw(pairs * seq, g).view(pairs, seq)
        tgt = idx.roll(-1, 1)
        tgt[:, : seq // 2] = IGNORE_INDEX
        tgt[:, -1] = IGNORE_INDEX
        out[f"{side}_idx"], out[f"{side}_targets"] = idx, tgt
        out[f"{side}_len"] = torch.full((pairs,), seq)
    return out


class PairData(PackedData):
    """DPO micro-batches: rows of a `pair_pool` that carries the reference's stored
    log-probabilities (computed once, before training, as the DPO stage does), cycled."""


# ---------------------------------------------------------------------------- measuring


def no_checkpoints() -> Checkpointer:
    """The real Checkpointer, disabled: it writes nothing and finds nothing to resume."""
    return Checkpointer(Path(tempfile.gettempdir()) / "gpu_check-never-written", "gpu-check-no-ckpt",
                        interval=10 ** 9, keep_last_k=1, enabled=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[int], object], calls: int, device: torch.device) -> list[float]:
    """Seconds of each of `calls` calls fn(0), fn(1), ...: CUDA events on the GPU (what the
    device spent, host launch overlap included), perf_counter on CPU."""
    if device.type != "cuda":
        out = []
        for i in range(calls):
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
        return out
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(calls + 1)]
    marks[0].record()
    for i in range(calls):
        fn(i)
        marks[i + 1].record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) / 1_000 for a, b in zip(marks, marks[1:])]


def dynamo_counts() -> dict[str, int]:
    """Graphs dynamo compiled and graph breaks so far in this process (torch 2.11 to 2.13
    keep both in torch._dynamo.utils.counters)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def sdpa_backends(op_names: set[str]) -> list[str]:
    """The SDPA backends whose forward op ran, by exact aten op name (flex: FlexAttention)."""
    found = [backend for backend, op in SDPA_OPS.items() if op in op_names]
    if any("flex_attention" in name for name in op_names):
        found.append("flex")
    return found


def profile_attention(fn: Callable[[], object], device: torch.device) -> dict:
    """Run fn once under the profiler and say which attention kernels it used."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    names = {e.name for e in prof.events()}
    return {"sdpa_backend": sdpa_backends(names) or ["none seen (math, decomposed by the compiler?)"],
            "attention_ops": sorted(n for n in names if "attention" in n.lower())}


def memory_figures(device: torch.device) -> dict:
    """Peak memory of this process, plus what lies outside the caching allocator (the CUDA
    context, cuBLAS workspaces): what a 24 GiB card must hold."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    outside = total - free - torch.cuda.memory_reserved(device)
    reserved = torch.cuda.max_memory_reserved(device)
    return {"max_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2),
            "max_reserved_gib": round(reserved / GIB, 2), "outside_allocator_gib": round(outside / GIB, 2),
            "peak_total_gib": round((reserved + outside) / GIB, 2), "fits_24_gib": reserved + outside < 24 * GIB}


def check(name: str, expected, got: float, tolerance: float, ok: bool | None = None, **extra) -> dict:
    """One sanity check as the JSON records it; ok defaults to |got - expected| <= tolerance."""
    if ok is None:
        ok = math.isfinite(got) and abs(got - float(expected)) <= tolerance
    return {"check": name, "expected": expected, "got": round(got, 6), "tolerance": tolerance, "ok": bool(ok), **extra}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------- training phases


def build_trainer(setup: Setup, stage: str, model: GPT, objective, data, tokens_per_micro=None) -> Trainer:
    runtime = setup_runtime("cpu" if setup.dry else "cuda")  # TF32 on, as a real run sets it
    return Trainer(model, objective, data, stage_config(stage, setup), runtime, max_steps=10_000,
                   tokens_per_micro=tokens_per_micro, checkpointer=no_checkpoints(), logger=MetricLogger(None))


def step_tokens(trainer: Trainer, step: int) -> int:
    return sum(trainer.tokens_per_micro(trainer.data.batch(step, m)) for m in trainer.micros)


def eager_loss(trainer: Trainer, step: int) -> float:
    """The plain module's mean loss over a step's micro-batches, no gradients, same autocast."""
    model, objective, device = trainer.model, trainer.objective, trainer.runtime.device
    with torch.no_grad(), trainer.runtime.autocast():
        losses = [float(objective(model, to_device(trainer.data.batch(step, m), device))[0]) for m in trainer.micros]
    return sum(losses) / len(losses)


def compiled_vs_eager(trainer: Trainer, step: int, tolerance: float) -> tuple[dict, float]:
    """The Trainer's (compiled) loss of a step against the eager loss of the same micro-batches
    at the same weights; also returns the step's loss."""
    eager = eager_loss(trainer, step)
    metrics, _ = trainer.train_step(step)
    got = float(metrics["loss/train"])
    return check("compiled and eager losses agree on one step", round(eager, 6), got, tolerance,
                 compiled=trainer.compiled, at_step=step), got


def run_training(setup: Setup, trainer: Trainer) -> tuple[dict, float]:
    """Compile (step 0), warm, then time; returns the figures and step 0's loss."""
    device = trainer.runtime.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    metrics, _ = trainer.train_step(0)
    first_loss = float(metrics["loss/train"])  # synchronises
    compile_s = time.perf_counter() - t0
    after_first = dynamo_counts()
    for step in range(1, 1 + setup.warm_steps):
        trainer.train_step(step)
    start = 1 + setup.warm_steps
    times = time_calls(lambda i: trainer.train_step(start + i), setup.timed_steps, device)
    end = dynamo_counts()
    tokens = step_tokens(trainer, start)
    mean_s = sum(times) / len(times)
    figures = {
        "batch": trainer.cfg.batch_size, "seq": setup.seq, "grad_accum": trainer.cfg.grad_accum,
        "tokens_per_step": tokens, "compiled": trainer.compiled, "autocast": str(trainer.runtime.autocast_dtype),
        "first_step_s": round(compile_s, 2), "warm_steps": setup.warm_steps, "timed_steps": len(times),
        "timer": setup.timer, "step_s_mean": round(mean_s, 5), "step_s_median": round(statistics.median(times), 5),
        "step_s_min": round(min(times), 5), "tokens_per_s": round(tokens / mean_s, 1),
        "memory": memory_figures(device),
        "dynamo": {"graphs": end["graphs"], "recompiles_after_first_step": end["graphs"] - after_first["graphs"],
                   "graph_breaks": end["graph_breaks"]},
    }
    return figures, first_loss


def throughput_figures(figures: dict, model: GPT, seq: int, device: torch.device) -> dict:
    """Achieved model TFLOP/s (PaLM FLOPs per token) and MFU against the datasheet peak."""
    cfg = model.config
    fpt = flops_per_token(model.num_params(), cfg.n_layer, cfg.n_embd, seq)
    achieved = figures["tokens_per_s"] * fpt
    peak = gpu_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {"flops_per_token": fpt, "model_tflops_per_s": round(achieved / 1e12, 4),
            "datasheet_peak_tflops": peak / 1e12 if peak else None,
            "mfu_datasheet": round(achieved / peak, 4) if peak else None}


def after_timing(setup: Setup, trainer: Trainer, tolerance: float) -> tuple[dict, list[dict]]:
    """The compiled-vs-eager check and the attention kernels, on steps after the timed ones."""
    step = 2 + setup.warm_steps + setup.timed_steps
    agree, _ = compiled_vs_eager(trainer, step, tolerance)
    kernels = profile_attention(lambda: trainer.train_step(step + 1), trainer.runtime.device)
    return kernels, [agree]


def untrained_loss_check(loss: float, vocab: int) -> dict:
    return check("untrained loss is ln(vocab) +- 0.5", round(math.log(vocab), 4), loss, 0.5,
                 expected_text=f"ln({vocab})")


def phase_pretrain(setup: Setup) -> dict:
    torch.manual_seed(0)
    model = GPT(setup.model)
    batch = stage_config("pretrain", setup).batch_size
    trainer = build_trainer(setup, "pretrain", model, LMObjective(), LMData(setup.model.vocab_size, batch, setup.seq))
    figures, first = run_training(setup, trainer)
    figures |= throughput_figures(figures, model, setup.seq, trainer.runtime.device)
    kernels, sanity = after_timing(setup, trainer, tolerance=0.01)
    return figures | kernels | {"sanity": [untrained_loss_check(first, setup.model.vocab_size), *sanity]}


@contextlib.contextmanager
def exact_float32():
    """float32 matmuls without TF32, so an equality check sees rounding of ~1e-6 only."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def token_weighted_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, **extra) -> tuple[float, int]:
    """(sum of per-token losses, counted tokens) of one row."""
    _, loss = model(idx[None], targets[None], **{k: v[None] for k, v in extra.items()})
    n = int((targets != IGNORE_INDEX).sum())
    return float(loss) * n, n


def doc_mask_check(model: GPT, block: dict[str, torch.Tensor], device: torch.device) -> dict:
    """A packed block's document-masked loss equals its examples' losses each run alone
    (float32, eager). `leak_gap` is how far the same block without document masking lands:
    what attention leaking across examples would give; the check only tells the two apart
    when it exceeds the tolerance."""
    model = copy.deepcopy(model).float().eval()
    idx, targets, docs = (block[k].to(device) for k in ("idx", "targets", "doc_ids"))
    with torch.no_grad(), exact_float32():
        total, count = token_weighted_loss(model, idx, targets, doc_ids=docs)
        leaked, _ = token_weighted_loss(model, idx, targets)
        alone = [token_weighted_loss(model, idx[docs == d], targets[docs == d]) for d in docs.unique().tolist()]
    expected = sum(s for s, _ in alone) / max(sum(n for _, n in alone), 1)
    got, tolerance = total / max(count, 1), 1e-4  # float32 rounding is ~1e-6
    gap = abs(leaked / max(count, 1) - expected)
    return check("a document-masked block's loss equals its examples' losses", round(expected, 6), got, tolerance,
                 ok=abs(got - expected) <= tolerance and gap > tolerance, leak_gap=round(gap, 6),
                 examples=len(alone))


def phase_sft_packed(setup: Setup) -> dict:
    torch.manual_seed(0)
    model = GPT(setup.model)
    cfg = stage_config("sft", setup)
    blocks = packed_blocks(setup.model.vocab_size, setup.seq, blocks=4 * cfg.batch_size * cfg.grad_accum)
    data = PackedData(blocks, cfg.batch_size, cfg.grad_accum)
    trainer = build_trainer(setup, "sft", model, LMObjective(), data)
    masked = doc_mask_check(model, {k: v[0] for k, v in blocks.items()}, trainer.runtime.device)
    figures, _ = run_training(setup, trainer)
    figures |= throughput_figures(figures, model, setup.seq, trainer.runtime.device)
    figures["loss_positions_share"] = round(float((blocks["targets"] != IGNORE_INDEX).float().mean()), 3)
    kernels, sanity = after_timing(setup, trainer, tolerance=0.01)
    return figures | kernels | {"sanity": [masked, *sanity]}


def phase_dpo(setup: Setup) -> dict:
    """DPO as the stage runs it: the reference's log-probabilities stored before training, so
    each step runs the policy alone (per-token log-probabilities from its compiled graph)."""
    torch.manual_seed(0)
    policy = GPT(setup.model)
    reference = copy.deepcopy(policy)
    cfg = stage_config("dpo", setup)
    pool = pair_pool(setup.model.vocab_size, setup.seq, pairs=4 * cfg.batch_size * cfg.grad_accum)
    trainer = build_trainer(setup, "dpo", policy, DPOObjective(None, beta=DPO_BETA),
                            PairData(pool, cfg.batch_size, cfg.grad_accum),
                            tokens_per_micro=lambda b: 2 * int(b["chosen_idx"].numel()))
    started = time.perf_counter()
    pool.update(reference_logps(reference.to(trainer.runtime.device), pool, cfg.batch_size,
                                trainer.runtime.device, trainer.runtime.autocast))
    reference_s = time.perf_counter() - started
    del reference
    batch = cfg.batch_size
    figures, first = run_training(setup, trainer)
    figures["reference_pass_s"] = round(reference_s, 3)
    kernels, sanity = after_timing(setup, trainer, tolerance=0.005)
    step0 = check("DPO step-0 loss is ln 2 (policy = reference)", round(math.log(2), 6), first, 0.01)
    return figures | kernels | {"pairs_per_micro": batch, "beta": DPO_BETA, "sanity": [step0, *sanity]}


# ---------------------------------------------------------------------------- other phases


def phase_calibration(setup: Setup) -> dict:
    """bf16 n^3 matmul TFLOP/s: the ceiling this GPU reaches in practice."""
    device = torch.device("cpu" if setup.dry else "cuda")
    n = setup.matmul_n
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(setup.warm_steps):
        torch.mm(a, b, out=out)
    calls = 2 if setup.dry else 50
    times = time_calls(lambda _: torch.mm(a, b, out=out), calls, device)
    flops = 2 * n ** 3
    return {"shape": f"{n}x{n}x{n} bf16", "timer": setup.timer, "calls": calls,
            "tflops_median": round(flops / statistics.median(times) / 1e12, 3),
            "tflops_best": round(flops / min(times) / 1e12, 3)}


def phase_decode(setup: Setup) -> dict:
    """Tokens/s of batched greedy decoding (continuous batching, the KV cache) on the run's model
    shape, random weights, bf16 autocast on the GPU as the trainer samples."""
    from wikigpt_core.generation import SamplingParams, generate_ids

    runtime = setup_runtime("cpu" if setup.dry else "cuda").with_precision("auto")
    device = runtime.device
    torch.manual_seed(0)
    model = GPT(setup.model).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = ZipfTokens(setup.model.vocab_size).draw(setup.decode_prompts * setup.decode_prompt_len, g)
    prompts = prompts.view(setup.decode_prompts, -1).tolist()
    params = [SamplingParams(max_new_tokens=setup.decode_new_tokens, temperature=0.0)] * len(prompts)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with runtime.autocast():
        generate_ids(model, prompts[:1], [SamplingParams(max_new_tokens=2, temperature=0.0)])  # warm
        sync(device)
        t0 = time.perf_counter()
        seqs = generate_ids(model, prompts, params, max_batch=len(prompts))
        sync(device)
        seconds = time.perf_counter() - t0
        kernels = profile_attention(lambda: generate_ids(model, prompts[:2], params[:2]), device)
    generated = sum(len(s.tokens) for s in seqs)
    return {"prompts": len(prompts), "prompt_tokens": setup.decode_prompt_len,
            "max_new_tokens": setup.decode_new_tokens, "generated_tokens": generated,
            "autocast": str(runtime.autocast_dtype), "seconds": round(seconds, 3),
            "tokens_per_s": round(generated / seconds, 1), "memory": memory_figures(device)} | kernels


PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def phase_tests(setup: Setup) -> dict:
    """`pytest -m gpu` on the GPU tests; on CPU they skip, which still proves they collect (the
    conftest imports without dagster)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/core/test_train_compile_gpu.py"]
    # Options meant for a calling pytest (e.g. CI's --require-passed) must not reach this one.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    print(done.stdout, flush=True)
    lines = done.stdout.strip().splitlines() or [""]
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in PYTEST_COUNTS.findall(lines[-1])}
    row = {"command": " ".join(cmd[2:]), "exit_code": done.returncode, "summary": lines[-1], "counts": counts}
    if done.returncode != 0:
        return row | {"status": "failed", "error": f"pytest exited {done.returncode}: {lines[-1]}",
                      "output_tail": done.stdout[-STDERR_TAIL_CHARS:] + done.stderr[-STDERR_TAIL_CHARS:]}
    if not setup.dry and (counts.get("skipped") or not counts.get("passed")):
        return row | {"status": "failed", "error": f"GPU tests did not all run on a CUDA machine: {lines[-1]}"}
    return row | ({"note": "no CUDA: the gpu tests skip; collected without dagster"} if setup.dry else {})


VLLM_LOAD = r"""
import json, sys
from vllm import LLM, SamplingParams
release, ids, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = LLM(model=release, tokenizer=release, dtype="bfloat16", enforce_eager=True, max_model_len=256,
          gpu_memory_utilization=0.2, seed=0)
tok = llm.get_tokenizer()
templated = tok.apply_chat_template([{"role": "user", "content": "What is Paris?"}], add_generation_prompt=True,
                                    tokenize=True)
out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True))
print("VLLM_RESULT " + json.dumps({"vllm": __import__("vllm").__version__, "templated": list(templated),
                                   "greedy": list(out[0].outputs[0].token_ids)}))
"""


def phase_vllm(setup: Setup) -> dict:
    """Does the tiny release (the tiny profile's shape, random weights, the export the release
    stage writes) load and generate in vLLM? Compares vLLM's chat template ids with the core's
    and its greedy ids with the core's."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"status": "skipped", "reason": "vllm is not installed in this environment"}
    if setup.dry:
        return {"status": "skipped", "reason": "dry run: vLLM needs the GPU"}
    with tempfile.TemporaryDirectory() as work:
        return vllm_load(Path(work), timeout_s=max(int(setup.budget_s) - 15, 30))


def vllm_load(workdir: Path, timeout_s: int) -> dict:
    from tests.core import test_release_support as support
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.generation import SamplingParams, generate_ids

    tok = support.train_tokenizer(workdir / "tokenizer")
    shape = load_settings("tiny", env=False).model
    torch.manual_seed(0)
    model = GPT(shape).eval()
    release = support.build_release(workdir, model, workdir / "tokenizer", name="vllm")
    prompt = render_prompt([{"role": "user", "content": "What is Paris?"}], tok)
    steps = 8
    with torch.no_grad():  # bf16, as vLLM serves it; near-ties of random weights may still differ
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        (reply,) = generate_ids(bf16, [prompt], [SamplingParams(steps, 0.0, 1.0)])
        core = reply.tokens  # ends early only at a stop id; vLLM runs with ignore_eos
    row = {"release": "tiny profile shape " + json.dumps({k: getattr(shape, k) for k in
                                                          ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")})}
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", VLLM_LOAD, str(release), json.dumps(prompt), str(steps)],
                              capture_output=True, text=True, timeout=timeout_s, cwd=workdir)
    except subprocess.TimeoutExpired:
        return row | {"status": "failed", "error": f"vLLM did not load and generate within {timeout_s} s"}
    row["load_and_generate_s"] = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("VLLM_RESULT ")]
    if done.returncode != 0 or not lines:
        return row | {"status": "failed", "error": f"vLLM exited {done.returncode}",
                      "output_tail": done.stderr[-STDERR_TAIL_CHARS:]}
    got = json.loads(lines[-1].removeprefix("VLLM_RESULT "))
    return row | {"vllm": got["vllm"], "template_ids_match": got["templated"] == prompt,
                  "greedy_ids_match": got["greedy"][:len(core)] == core, "greedy_vllm": got["greedy"], "greedy_core": core}


# ---------------------------------------------------------------------------- the phases


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Setup], dict]
    need_s: int
    """Seconds it needs on the GPU at the least: with less left before the deadline it is skipped."""
    cap_s: int
    """Seconds it may take at most, so one slow phase cannot starve the rest."""


PHASES = (
    Phase("tests", phase_tests, need_s=60, cap_s=150),
    Phase("calibration", phase_calibration, need_s=10, cap_s=60),
    Phase("pretrain", phase_pretrain, need_s=60, cap_s=150),
    Phase("sft_packed", phase_sft_packed, need_s=60, cap_s=150),
    Phase("dpo", phase_dpo, need_s=60, cap_s=150),
    Phase("decode", phase_decode, need_s=20, cap_s=60),
    Phase("vllm", phase_vllm, need_s=60, cap_s=200),
)
PHASE_BY_NAME = {p.name: p for p in PHASES}
DRY_NEED_S = 1  # on CPU with micro shapes every phase takes seconds


def phase_file(out: Path, name: str) -> Path:
    return out / "phases" / f"{name}.json"


def write_json(path: Path, obj: dict) -> None:
    """Atomically: a reader (or a killed run) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run_phase_here(name: str, out: Path, dry: bool, budget_s: float) -> int:
    """The child's side: run one phase, write its figures (a failure raises, and its traceback
    on stderr is what the parent keeps)."""
    setup = make_setup(dry, budget_s)
    figures = PHASE_BY_NAME[name].run(setup)
    device = "cpu" if setup.dry else torch.cuda.get_device_name()
    write_json(phase_file(out, name), {"device": device} | figures)
    return 0


def _pump(stream, tail: collections.deque) -> None:
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)


def run_child(cmd: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run a child in its own process group, echoing its stderr and keeping the tail; the
    exit code is None when it ran past timeout_s (the group is then killed)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    tail: collections.deque = collections.deque(maxlen=80)
    reader = threading.Thread(target=_pump, args=(proc.stderr, tail), daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(timeout=5)
    return code, "".join(tail)[-STDERR_TAIL_CHARS:]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_phase(phase: Phase, args, deadline: float) -> dict:
    """The parent's side: start the phase's child if it can finish before the deadline."""
    left = deadline - time.monotonic()
    need = DRY_NEED_S if args.dry_run else phase.need_s
    if left < need:
        return {"status": "skipped", "reason": f"deadline: {left:.0f} s left of --deadline-s {args.deadline_s}, "
                                               f"the phase needs about {need} s"}
    budget = min(left, phase.cap_s)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase.name, "--out", str(args.out),
           "--budget-s", str(int(budget)), *(["--dry-run"] if args.dry_run else [])]
    phase_file(args.out, phase.name).unlink(missing_ok=True)
    t0 = time.monotonic()
    code, tail = run_child(cmd, budget)
    path = phase_file(args.out, phase.name)
    row = json.loads(path.read_text()) if path.exists() else {}
    if code is None:
        why = "the deadline" if budget < phase.cap_s else f"its cap of {phase.cap_s} s"
        row |= {"status": "failed", "error": f"killed after {budget:.0f} s: ran into {why}"}
    elif code != 0:
        row |= {"status": "failed", "error": last_line(tail) or f"exited {code}"}
    row.setdefault("status", "ok")
    return row | {"seconds": round(time.monotonic() - t0, 1), "stderr_tail": tail}


# ---------------------------------------------------------------------------- the report


def figure(report: dict, phase: str, *keys):
    """A figure of an ok phase, or None."""
    row = report["phases"].get(phase, {})
    if row.get("status") != "ok":
        return None
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return row


def add_ceiling_mfu(report: dict) -> None:
    """MFU against the measured matmul ceiling, for the phases that report model TFLOP/s."""
    ceiling = figure(report, "calibration", "tflops_median")
    for name in ("pretrain", "sft_packed"):
        achieved = figure(report, name, "model_tflops_per_s")
        if ceiling and achieved is not None:
            report["phases"][name]["mfu_measured_ceiling"] = round(achieved / ceiling, 4)
            report["phases"][name]["measured_ceiling_tflops"] = ceiling


def ratio(a, b, digits: int = 3):
    return round(a / b, digits) if a is not None and b else None


def goal(name: str, target: str, got, met: Callable[[float], bool]) -> dict:
    return {"goal": name, "target": target, "got": got, "met": None if got is None else bool(met(got))}


def goals(report: dict) -> list[dict]:
    """The figures against the goals for an H100/H200 (dry runs have no goal figures)."""
    pre_tps = figure(report, "pretrain", "tokens_per_s")
    per_token = {k: ratio(figure(report, k, "step_s_mean"), figure(report, k, "tokens_per_step"), digits=12)
                 for k in ("pretrain", "dpo")}
    rows = [
        goal("124m pretraining MFU (datasheet peak)", f">= {PRETRAIN_MFU_GOAL}",
             figure(report, "pretrain", "mfu_datasheet"), lambda v: v >= PRETRAIN_MFU_GOAL),
        goal("packed SFT tokens/s as a share of pretraining's", f">= {SFT_SHARE_GOAL}",
             ratio(figure(report, "sft_packed", "tokens_per_s"), pre_tps), lambda v: v >= SFT_SHARE_GOAL),
        goal("DPO step time per token / pretraining's (a policy-only forward+backward)", f"<= {DPO_PER_TOKEN_GOAL}",
             ratio(per_token["dpo"], per_token["pretrain"]), lambda v: v <= DPO_PER_TOKEN_GOAL),
    ]
    for name in ("pretrain", "sft_packed", "dpo"):
        rows.append(goal(f"{name} peak memory with the CUDA context, GiB", f"<= {STAGE_MEMORY_GOAL_GIB}",
                         figure(report, name, "memory", "peak_total_gib"), lambda v: v <= STAGE_MEMORY_GOAL_GIB))
    return rows


def sanity(report: dict) -> list[dict]:
    return [{"phase": name} | c for name, row in report["phases"].items() for c in row.get("sanity", [])]


def refresh(report: dict, started: float) -> None:
    add_ceiling_mfu(report)
    report["sanity"] = sanity(report)
    report["goals"] = "dry run: no GPU figures" if report["dry_run"] else goals(report)
    devices = [row["device"] for row in report["phases"].values() if "device" in row]
    report["device"] = devices[0] if devices else report.get("device")
    report["failed_phases"] = [n for n, row in report["phases"].items() if row["status"] == "failed"]
    report["ok"] = not report["failed_phases"] and all(c["ok"] for c in report["sanity"])
    report["seconds"] = round(time.monotonic() - started, 1)


def run_all(args) -> int:
    started = time.monotonic()
    deadline = started + args.deadline_s
    report = {"dry_run": args.dry_run, "produced_by": "benchmarks/gpu_check.py (the real Trainer, random tokens)",
              "torch": torch.__version__, "python": platform.python_version(), "deadline_s": args.deadline_s,
              "phases": {}}
    out = args.out / REPORT_FILE
    for phase in PHASES:
        print(f"gpu_check: phase {phase.name}", file=sys.stderr, flush=True)
        report["phases"][phase.name] = run_phase(phase, args, deadline)
        refresh(report, started)
        write_json(out, report)  # after every phase: a later crash loses nothing already measured
    print(json.dumps({k: v for k, v in report.items() if k != "phases"}, indent=2, default=str))
    print(f"gpu_check: {'ok' if report['ok'] else 'NOT ok'}; figures in {out}", file=sys.stderr)
    return 0 if report["ok"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help=f"directory for {REPORT_FILE}")
    p.add_argument("--dry-run", action="store_true", help="CPU, micro shapes, 1-2 steps: the wiring only")
    p.add_argument("--deadline-s", type=float, default=480.0, help="all phases together end within this")
    p.add_argument("--phase", choices=sorted(PHASE_BY_NAME), help=argparse.SUPPRESS)  # a child: one phase
    p.add_argument("--budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        return run_phase_here(args.phase, args.out, args.dry_run, args.budget_s)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; these figures need one (--dry-run checks the wiring on CPU)",
              file=sys.stderr)
        return 2
    return run_all(args)


if __name__ == "__main__":
    raise SystemExit(main())

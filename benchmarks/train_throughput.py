"""Training throughput of the model core (the real `Trainer.train_step`) against stock
transformers `LlamaForCausalLM`, and of the core's own precision/compile options.

    python benchmarks/train_throughput.py                          # CPU: tiny and 124m
    python benchmarks/train_throughput.py --profiles 124m --steps 2 --repeats 1
    python benchmarks/train_throughput.py --profiles 124m --batch 16   # on a GPU

Variants (all measured in this run, same shape, same micro-batch, same threads):

  core-eager-fp32    Trainer.train_step, float32, no compile (the CPU default)
  hf-eager-fp32      transformers LlamaForCausalLM built from the release's own `llama_config`
                     (what `hf_release` publishes) and loaded with the core's initial weights, so
                     both start from the same parameters; trained by the same loop shape: the same
                     random batches, cross-entropy over the same (B, T) targets, the same AdamW
                     (`build_optimizer`: param groups, betas, weight decay; fused on CUDA), grad
                     clipping and LR schedule
  core-compile-fp32  the core with torch.compile (Trainer's compile="on")
  core-eager-bf16    the core under bf16 autocast (CPU autocast here; CUDA's on a GPU)
  core-compile-bf16, hf-eager-bf16   available with --variants (the GPU set)

Ratios printed: core / transformers in eager fp32 (goal >= 1.0x), compile / eager and bf16 /
eager for the core. Timing: `--warmup` steps (compile variants at least 2; the first step's
seconds, compile time included, are reported), then the best of `--repeats` blocks of `--steps`
steps. For tiny the variants are timed in interleaved rounds, so a change in the load of a
shared machine hits all of them alike; for 124m one variant is alive at a time (memory).

Tokens/s counts B x T trained tokens per step. FLOPs per token = 6N + 12 * n_layer * n_embd * T
(N counts the tied head once); MFU on GPUs whose dense bf16 peak is known (H100/H200 989,
A100 312, RTX 4090 165 TFLOP/s); peak memory from torch.cuda.max_memory_allocated.

Writes the figures and the machine (CPU model, cores, torch threads, load) as JSON to --json
(default benchmarks/results/train_throughput.json).

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
import gc
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import machine_info, machine_line, write_json  # noqa: E402
from wikigpt_core.config import load_settings  # noqa: E402
from wikigpt_core.model import GPT  # noqa: E402
from wikigpt_core.train.metrics import MetricLogger, flops_per_token, gpu_peak_flops  # noqa: E402
from wikigpt_core.train.objectives import LMObjective  # noqa: E402
from wikigpt_core.train.runtime import Runtime, build_optimizer, setup_runtime  # noqa: E402
from wikigpt_core.train.schedule import CosineSchedule  # noqa: E402
from wikigpt_core.train.trainer import Trainer  # noqa: E402

CPU_VARIANTS = "core-eager-fp32,hf-eager-fp32,core-compile-fp32,core-eager-bf16"
GPU_VARIANTS = "core-eager-bf16,hf-eager-bf16,core-compile-bf16,core-eager-fp32,hf-eager-fp32"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "train_throughput.json"


class RandomTokens:
    """Deterministic random batches: the same (step, micro) gives the same tokens to every variant."""

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


class BF16Runtime(Runtime):
    """The runtime with bf16 autocast on whichever device it is (CPU autocast included)."""

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


class FP32Runtime(Runtime):
    """The runtime with autocast off (float32 everywhere, CUDA included)."""

    def autocast(self):
        return contextlib.nullcontext()


class HFStep:
    """transformers LlamaForCausalLM trained with the Trainer's step shape: lr from the same
    schedule, forward + cross-entropy over the same targets, backward, clip, AdamW step."""

    def __init__(self, hf_model, cfg, runtime: Runtime, data: RandomTokens, max_steps: int):
        self.model, self.runtime, self.data, self.cfg = hf_model.to(runtime.device), runtime, data, cfg
        self.optimizer = build_optimizer(self.model, cfg, runtime)
        self.schedule = CosineSchedule(cfg.lr, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)

    def train_step(self, step: int):
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(step)
        b = {k: v.to(self.runtime.device) for k, v in self.data.batch(step, 0).items()}
        with self.runtime.autocast():
            logits = self.model(input_ids=b["idx"], use_cache=False).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), b["targets"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss/train": loss.detach()}, b["idx"].numel()


def hf_twin(core: GPT):
    """A stock LlamaForCausalLM in the release's config, holding the core model's weights."""
    import transformers

    from wikigpt_core.release.hf_export import core_to_hf, llama_config

    hf_cfg = llama_config(core.config, bos_id=0, eos_id=0, pad_id=0)
    hf_cfg.pop("architectures", None)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg))
    state = core_to_hf(core.state_dict(), core.config.n_layer)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # The tied head is stored once (lm_head.weight is the embedding); nothing else may be missing.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"core -> HF weights did not line up: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass
class Bench:
    """One variant, built and warmed up, ready to time."""

    profile: str
    variant: str
    stepper: object
    batch: int
    seq: int
    params: int
    flops_per_token: float
    first_step_s: float = 0.0
    first_loss: float = 0.0
    next_step: int = 0
    best_step_s: float = float("inf")
    load: list = dataclasses.field(default_factory=list)


def build(profile: str, variant: str, args, base: Runtime) -> Bench:
    impl, mode, precision = variant.split("-")
    settings = load_settings(profile)
    mcfg = settings.model
    seq = args.seq or mcfg.block_size
    batch = args.batch or (16 if base.is_cuda else (4 if profile == "tiny" else 1))
    cfg = dataclasses.replace(settings.pretrain, batch_size=batch, grad_accum=1,
                              compile="on" if mode == "compile" else "off",
                              warmup_steps=1, max_steps=10_000)
    rt_cls = BF16Runtime if precision == "bf16" else FP32Runtime
    rt = rt_cls(device=base.device, rank=base.rank, world_size=base.world_size, local_rank=base.local_rank)
    data = RandomTokens(mcfg.vocab_size, batch, seq)
    torch.manual_seed(0)
    core = GPT(mcfg)
    n_params = core.num_params()
    if impl == "core":
        stepper = Trainer(core, LMObjective(), data, cfg, rt, max_steps=10_000,
                          checkpointer=NoCheckpoints(), logger=MetricLogger(None))
    elif impl == "hf":
        if mode != "eager":
            raise SystemExit(f"{variant}: only eager is measured for transformers")
        hf = hf_twin(core)
        n_hf = sum(p.numel() for p in hf.parameters())  # tied: the shared tensor counts once
        if n_hf != n_params:
            raise SystemExit(f"{variant}: {n_hf} parameters vs the core's {n_params}: not the same shape")
        del core
        stepper = HFStep(hf, cfg, rt, data, 10_000)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    b = Bench(profile, variant, stepper, batch, seq, n_params,
              flops_per_token(n_params, mcfg.n_layer, mcfg.n_embd, seq))
    warmup = max(args.warmup, 2) if mode == "compile" else args.warmup
    t0 = time.perf_counter()
    for s in range(warmup):
        mets, _ = stepper.train_step(s)
        if s == 0:
            b.first_loss = float(mets["loss/train"])  # a host sync
            b.first_step_s = time.perf_counter() - t0
    sync(base.device)
    b.next_step = warmup
    return b


def time_block(b: Bench, steps: int, device: torch.device) -> None:
    t = time.perf_counter()
    for _ in range(steps):
        b.stepper.train_step(b.next_step)
        b.next_step += 1
    sync(device)
    b.best_step_s = min(b.best_step_s, (time.perf_counter() - t) / steps)
    b.load.append(round(os.getloadavg()[0], 2))


def summary(b: Bench, args, base: Runtime) -> dict:
    tps = b.batch * b.seq / b.best_step_s
    out = {"profile": b.profile, "variant": b.variant, "batch": b.batch, "seq": b.seq, "params": b.params,
           "step_s": b.best_step_s, "tok_s": tps, "tflop_s": tps * b.flops_per_token / 1e12,
           "first_step_s": b.first_step_s, "first_loss": b.first_loss, "steps_timed": args.steps,
           "repeats": args.repeats, "load_average_1m": b.load}
    if base.is_cuda:
        peak = gpu_peak_flops(torch.cuda.get_device_name(base.device))
        out["mfu"] = tps * b.flops_per_token / peak if peak else None
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def measure_profile(profile: str, variants: list[str], args, base: Runtime) -> dict[str, dict]:
    """Small models: all variants built, then timed in interleaved rounds (a load change on a
    shared machine hits every variant alike). Large ones: one variant alive at a time."""
    interleave = args.interleave == "on" or (args.interleave == "auto" and profile == "tiny")
    rows: dict[str, dict] = {}
    if interleave:
        benches = [build(profile, v, args, base) for v in variants]
        for _ in range(args.repeats):
            for b in benches:
                time_block(b, args.steps, base.device)
        return {b.variant: summary(b, args, base) for b in benches}
    for v in variants:
        if base.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        b = build(profile, v, args, base)
        for _ in range(args.repeats):
            time_block(b, args.steps, base.device)
        rows[v] = summary(b, args, base)
        del b
        gc.collect()
        if base.is_cuda:
            torch.cuda.empty_cache()
    return rows


def ratio(rows: dict, a: str, b: str) -> float | None:
    if a in rows and b in rows:
        return rows[a]["tok_s"] / rows[b]["tok_s"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", default="tiny,124m")
    p.add_argument("--variants", default=None, help=f"comma list (CPU default {CPU_VARIANTS}; GPU {GPU_VARIANTS})")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: 16 on GPU; CPU tiny 4, 124m 1)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: block_size)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=2, help="timed blocks; the best is kept")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--interleave", choices=("auto", "on", "off"), default="auto",
                   help="time variants in interleaved rounds (auto: tiny only, to bound memory)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = setup_runtime(args.device)
    variants = (args.variants or (GPU_VARIANTS if base.is_cuda else CPU_VARIANTS)).split(",")
    machine = machine_info()
    print(machine_line(machine))
    results: dict[str, dict] = {}
    for profile in args.profiles.split(","):
        rows = measure_profile(profile, variants, args, base)
        for v, r in rows.items():
            extra = ""
            if r.get("mfu") is not None:
                extra += f"  MFU {100 * r['mfu']:.1f}%"
            if "peak_mem_gb" in r:
                extra += f"  peak mem {r['peak_mem_gb']:.1f} GB"
            print(f"{profile:>5} {v:<18} batch {r['batch']} x {r['seq']}  {r['tok_s']:10.1f} tok/s  "
                  f"{r['tflop_s']:.3f} TFLOP/s  step {r['step_s'] * 1e3:8.1f} ms  first step "
                  f"{r['first_step_s']:.1f} s  loss@0 {r['first_loss']:.4f}  load {max(r['load_average_1m'])}{extra}",
                  flush=True)
        ratios = {
            "core_vs_hf_eager_fp32": ratio(rows, "core-eager-fp32", "hf-eager-fp32"),
            "core_vs_hf_eager_bf16": ratio(rows, "core-eager-bf16", "hf-eager-bf16"),
            "compile_vs_eager_fp32": ratio(rows, "core-compile-fp32", "core-eager-fp32"),
            "compile_vs_eager_bf16": ratio(rows, "core-compile-bf16", "core-eager-bf16"),
            "bf16_vs_fp32_eager": ratio(rows, "core-eager-bf16", "core-eager-fp32"),
        }
        for name, value in ratios.items():
            if value is not None:
                goal = "  (goal >= 1.0x)" if name == "core_vs_hf_eager_fp32" else ""
                print(f"{profile:>5} {name}: {value:.2f}x{goal}")
        if "core-eager-fp32" in rows and "hf-eager-fp32" in rows:
            d = abs(rows["core-eager-fp32"]["first_loss"] - rows["hf-eager-fp32"]["first_loss"])
            print(f"{profile:>5} same weights, same batch: |loss_core - loss_hf| at step 0 = {d:.2e}")
        results[profile] = {"variants": rows, "ratios": {k: v for k, v in ratios.items() if v is not None}}
    print(f"figures: {write_json(args.json, 'benchmarks/train_throughput.py', machine, results)}")


if __name__ == "__main__":
    main()

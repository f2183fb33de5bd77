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

Stage rows (--stages, default pretrain,sft,dpo on the profiles of --stage-profiles, CPU default
micro,tiny): each stage's new path against the path it replaced, same model, same batches, same
threads, timed in interleaved rounds:

  pretrain-old / -new   whole (B*T, V) logits + cross-entropy / the chunked fused head + loss
  sft-old / -new        packed blocks (4-5 examples each): dense document mask + whole logits /
                        FlexAttention (CUDA; CPU keeps the dense mask: no CPU backward) + the
                        chunked head
  dpo-old               the previous DPO step: live reference (eager), whole logits, log-softmax
  dpo-live / -stored    the new step with a live reference / on stored reference
                        log-probabilities (the policy alone); both per-token log-probabilities
                        from the chunked head, micro-batches cut to length buckets

Printed: tok/s (real tokens: DPO counts both sequences of a pair), step time, the peak memory
the stage's step needs (memory.py's fake-tensor estimate of the real step at that micro-batch:
tensors only, no allocator reserve; measured torch.cuda.max_memory_allocated on a GPU), and the
ratios new / old and DPO stored / live.

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
from wikigpt_core.model_config import GPTConfig  # noqa: E402
from wikigpt_core.train import memory  # noqa: E402
from wikigpt_core.train.objectives import DPOObjective, LMObjective, dpo_loss, reference_logps  # noqa: E402
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
    tokens_per_step: float = 0.0
    """Stage rows: real tokens per step (summary() counts batch x seq instead)."""


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


# ---------------------------------------------------------------- stage rows: new paths vs old

MICRO = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32, mlp_multiple_of=16)
"""The micro shape the tests train (a stage row's smallest profile)."""
STAGE_VARIANTS = {"pretrain": ("old", "new"), "sft": ("old", "new"), "dpo": ("old", "live", "stored")}


def stage_settings(profile: str):
    """(model shape, {stage: TrainConfig}) of a profile; micro borrows tiny's training settings."""
    settings = load_settings("tiny" if profile == "micro" else profile, env=False)
    model = MICRO if profile == "micro" else settings.model
    return model, {s: settings.section(s) for s in STAGE_VARIANTS}


def packed_rows(vocab: int, seq: int, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Packed blocks: examples of seq/8 .. seq/3 tokens, the first third prompt (no loss)."""
    from wikigpt_core.train.data import pack_examples

    g = torch.Generator().manual_seed(seed)
    examples = []
    while len(examples) < rows * 6:
        n = int(torch.randint(seq // 8, seq // 3 + 1, (1,), generator=g))
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        examples.append((ids, [-100] * (n // 3) + ids[n // 3:]))
    packed, _ = pack_examples(examples, seq, pad_id=0, end_id=0)
    return {k: v[:rows] for k, v in packed.items()}


def pair_rows(vocab: int, seq: int, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """DPO pairs of seq/2 .. seq tokens, the first half prompt, padded as `pair_tensors` pads."""
    g, out = torch.Generator().manual_seed(seed), {}
    lengths = torch.randint(seq // 2, seq + 1, (2, rows), generator=g)
    for i, side in enumerate(("chosen", "rejected")):
        idx = torch.randint(4, vocab, (rows, seq), generator=g)
        tgt = idx.roll(-1, 1)
        cols = torch.arange(seq)
        tgt[(cols[None, :] < seq // 4) | (cols[None, :] >= lengths[i][:, None] - 1)] = -100
        out[f"{side}_idx"], out[f"{side}_targets"], out[f"{side}_len"] = idx, tgt, lengths[i]
    return out


class Rows:
    """Micro-batch (step, micro) = `batch` rows of a fixed set, cycled; one batch per step."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch: int):
        self.tensors, self.batch_size = tensors, batch

    def batch(self, step: int, micro: int):
        n = next(iter(self.tensors.values())).shape[0]
        rows = torch.arange(step * self.batch_size, (step + 1) * self.batch_size) % n
        return {k: v[rows] for k, v in self.tensors.items()}


class PreviousDPO:
    """The DPO step this code replaced, kept as the baseline: trim to the last response column,
    policy and live eager reference both through whole float32 logits and log-softmax."""

    def __init__(self, reference: GPT, beta: float):
        self.reference, self.beta = reference.eval().requires_grad_(False), beta

    def _logps(self, model, idx, tgt):
        logits, _ = model(idx, tgt)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * (tgt != -100)).sum(-1)

    def __call__(self, model, batch):
        used = (batch["chosen_targets"] != -100) | (batch["rejected_targets"] != -100)
        end = int(used.any(0).nonzero().max()) + 1
        n = batch["chosen_idx"].shape[0]
        idx = torch.cat([batch["chosen_idx"], batch["rejected_idx"]])[:, :end]
        tgt = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])[:, :end]
        policy = self._logps(model, idx, tgt)
        with torch.no_grad():
            ref = self._logps(self.reference, idx, tgt)
        loss, _, _ = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
        return loss.mean(), {}


def stage_objective(stage: str, path: str, model: GPT, data: Rows, cfg, rt: Runtime):
    if stage != "dpo":
        return LMObjective(flex=None if path == "new" else False, chunked=path == "new")
    reference = GPT(model.config)
    reference.load_state_dict(model.state_dict())
    reference.to(rt.device)
    if path == "old":
        return PreviousDPO(reference, cfg.dpo_beta)
    if path == "stored":
        data.tensors.update(reference_logps(reference, data.tensors, cfg.batch_size, rt.device, rt.autocast))
        return DPOObjective(None, beta=cfg.dpo_beta)
    return DPOObjective(reference, beta=cfg.dpo_beta)


def real_tokens(stage: str, batch: dict) -> int:
    if stage == "dpo":
        return int(batch["chosen_len"].sum() + batch["rejected_len"].sum())
    return int((batch["targets"] != -100).sum()) if stage == "sft" else batch["idx"].numel()


def build_stage(profile: str, stage: str, path: str, args, base: Runtime) -> Bench:
    mcfg, cfgs = stage_settings(profile)
    seq = mcfg.block_size
    batch = args.batch or (cfgs[stage].batch_size if base.is_cuda else (4 if profile == "micro" else 2))
    cfg = dataclasses.replace(cfgs[stage], batch_size=batch, grad_accum=1, warmup_steps=1,
                              max_steps=10_000, compile="on" if args.stage_compile else "off")
    rows = 8 * batch
    tensors = (pair_rows if stage == "dpo" else packed_rows)(mcfg.vocab_size, seq, rows, 0) \
        if stage != "pretrain" else RandomTokens(mcfg.vocab_size, rows, seq).batch(0, 0)
    data = Rows(tensors, batch)
    rt = base.with_precision("auto")
    torch.manual_seed(0)
    model = GPT(mcfg)
    objective = stage_objective(stage, path, model, data, cfg, rt)
    stepper = Trainer(model, objective, data, cfg, rt, max_steps=10_000, checkpointer=NoCheckpoints(),
                      logger=MetricLogger(None), tokens_per_micro=lambda b: real_tokens(stage, b))
    n_params = model.num_params()
    b = Bench(profile, f"{stage}-{path}", stepper, batch, seq, n_params,
              flops_per_token(n_params, mcfg.n_layer, mcfg.n_embd, seq))
    t0 = time.perf_counter()
    for s in range(max(args.warmup, 2 if args.stage_compile else 1)):
        mets, _ = stepper.train_step(s)
        if s == 0:
            b.first_loss, b.first_step_s = float(mets["loss/train"]), time.perf_counter() - t0
    sync(base.device)
    b.next_step = max(args.warmup, 2 if args.stage_compile else 1)
    b.tokens_per_step = sum(real_tokens(stage, data.batch(s, 0)) for s in range(8)) / 8
    return b


def estimated_peak(profile: str, stage: str, path: str, batch: int) -> float | None:
    """GiB of tensors at the step's peak (memory.py, fake tensors); None where it does not model
    the path (the previous DPO step with its live reference)."""
    if stage == "dpo" and path != "stored":
        return None
    mcfg, cfgs = stage_settings(profile)
    return memory.measure_step(stage, mcfg, cfgs[stage], batch, fused_head=path != "old").peak / memory.GIB


def measure_stages(profile: str, stages: list[str], args, base: Runtime) -> dict[str, dict]:
    benches = [build_stage(profile, st, path, args, base) for st in stages for path in STAGE_VARIANTS[st]]
    for _ in range(args.repeats):
        for b in benches:
            time_block(b, args.steps, base.device)
    rows = {}
    for b in benches:
        stage, path = b.variant.split("-")
        rows[b.variant] = {"profile": profile, "variant": b.variant, "batch": b.batch, "seq": b.seq,
                           "step_s": b.best_step_s, "tok_s": b.tokens_per_step / b.best_step_s,
                           "first_loss": b.first_loss, "load_average_1m": b.load,
                           "estimated_peak_gib": estimated_peak(profile, stage, path, b.batch)}
        if base.is_cuda:
            rows[b.variant]["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return rows


def stage_ratios(rows: dict) -> dict[str, float]:
    pairs = {"pretrain_new_vs_old": ("pretrain-new", "pretrain-old"), "sft_new_vs_old": ("sft-new", "sft-old"),
             "dpo_stored_vs_old": ("dpo-stored", "dpo-old"), "dpo_stored_vs_live": ("dpo-stored", "dpo-live")}
    return {name: rows[a]["tok_s"] / rows[b]["tok_s"] for name, (a, b) in pairs.items() if a in rows and b in rows}


def print_stage_rows(profile: str, rows: dict, ratios: dict) -> None:
    for v, r in rows.items():
        peak = r["estimated_peak_gib"]
        print(f"{profile:>5} {v:<14} batch {r['batch']} x {r['seq']}  {r['tok_s']:10.1f} tok/s  "
              f"step {r['step_s'] * 1e3:8.1f} ms  loss@0 {r['first_loss']:.4f}  est. peak "
              f"{'-' if peak is None else f'{peak:.3f} GiB'}  load {max(r['load_average_1m'])}", flush=True)
    for name, value in ratios.items():
        print(f"{profile:>5} {name}: {value:.2f}x", flush=True)


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
    p.add_argument("--stages", default="pretrain,sft,dpo", help="stage rows (empty: none)")
    p.add_argument("--stage-profiles", default=None, help="profiles of the stage rows (CPU default "
                   "micro,tiny; GPU 124m)")
    p.add_argument("--stage-compile", action="store_true", help="compile the stage rows (GPU default)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = setup_runtime(args.device)
    variants = (args.variants or (GPU_VARIANTS if base.is_cuda else CPU_VARIANTS)).split(",")
    machine = machine_info()
    print(machine_line(machine))
    results: dict[str, dict] = {}
    for profile in [p for p in args.profiles.split(",") if p]:
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
    stages = [st for st in args.stages.split(",") if st]
    args.stage_compile = args.stage_compile or base.is_cuda
    for profile in (args.stage_profiles or ("124m" if base.is_cuda else "micro,tiny")).split(","):
        if not stages:
            break
        rows = measure_stages(profile, stages, args, base)
        ratios = stage_ratios(rows)
        print_stage_rows(profile, rows, ratios)
        results.setdefault("stages", {})[profile] = {"rows": rows, "ratios": ratios}
    print(f"figures: {write_json(args.json, 'benchmarks/train_throughput.py', machine, results)}")


if __name__ == "__main__":
    main()

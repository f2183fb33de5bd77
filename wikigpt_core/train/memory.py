"""Will a training stage fit its GPU? Answered on a CPU, before a GPU is rented.

The estimate runs the real step: the real `GPT`, the stage's real objective (`LMObjective`
with the chunked head and loss the GPU runs, or `DPOObjective` on stored reference
log-probabilities, the policy alone) and the real `Trainer.train_step` (autocast,
backward, gradient clipping, AdamW) on fake tensors (`FakeTensorMode`: shapes and dtypes, no
data, no compute). A dispatch mode counts the bytes of every tensor storage the step creates
and subtracts them when the storage dies, so its high-water mark is the step's peak of
allocated memory. Two optimizer steps of two micro-batches each are run, so the peak is the
steady state: AdamW's moments exist and the first micro-batch's gradients are still held
while the second one runs.

What the figure is, and what is added to it:
- Fake tensors here are CPU tensors under CPU bf16 autocast: a CPU-only torch cannot run
  autocast or attention on fake CUDA tensors. The step allocates the same tensors either way
  (bf16 matmul outputs, float32 norms and logits, flash-style attention that keeps only a
  log-sum-exp per row).
- Compile is off: eager is the upper bound, since compiling only fuses and frees sooner.
- `CUDA_CONTEXT_BYTES` and `ALLOCATOR_RESERVE` are added for what no tensor shows (below).
- With several GPUs, DDP's gradient buckets add one more copy of the gradients per GPU.

When a stage does not fit, `plan_micro_batch` lowers the micro-batch to a divisor of the
configured one and multiplies the accumulation by the same factor, so the global batch stays
the same; if even a micro-batch of 1 does not fit, it refuses with the numbers. The launcher
asks before renting (`preflight`, from the accelerator named in the task); the stage asks
again on the box (`fit_to_device`, from the card's real memory), and trains through
`SplitBatches`, which cuts each configured micro-batch into equal parts: every optimizer step
sees the same rows as the configured run, so the run key (taken from the configured batch)
and its resumable checkpoints stay valid. The update is the configured one up to float
rounding, except that SFT's token-weighted mean is then taken per smaller piece; the trained
bytes, hence the artifact's content hash (its DataVersion), differ as they would on any other
GPU, while the code version, from the config, does not change.

    python -m wikigpt_core.train.memory --profile 124m --card RTX4090
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from wikigpt_core.model import GPT
from wikigpt_core.model_config import GPTConfig
from wikigpt_core.train.config import as_dict, seq_len
from wikigpt_core.train.objectives import DPOObjective, LMObjective
from wikigpt_core.train.runtime import Runtime
from wikigpt_core.train.trainer import Trainer

GIB = 1 << 30

CUDA_CONTEXT_BYTES = GIB // 2
"""The CUDA context, cuBLAS/cuDNN workspaces and loaded kernels, outside any tensor. PyTorch
measured 287 MB for a bare context with lazy module loading (its default since 1.13) and 667 MB
without (pytorch/pytorch pull request 86509); workspaces and the kernels a training step loads
come on top of the first, so 0.5 GiB is the figure used."""

ALLOCATOR_RESERVE = 1.10
"""The caching allocator's rounding (2 MiB blocks, 20 MiB segments) and fragmentation: the
memory it reserves runs some 5-10 % above what tensors hold at the peak; 10 % is added."""

CARD_USABLE_BYTES = {
    "RTX4090": int(23.6 * GIB),  # 24 GiB nominal; torch reports ~23.6 GiB total
    "RTX3090": int(23.6 * GIB),
    "A10G": int(22.0 * GIB),
    "L4": int(22.0 * GIB),
    "RTX6000-ADA": int(47.5 * GIB),
    "L40S": int(44.5 * GIB),
    "A100": int(39.5 * GIB),
    "A100-80GB": int(79.1 * GIB),
    "H100": int(79.1 * GIB),
    "H200": int(139.0 * GIB),
}
"""Memory torch reports for a card (`get_device_properties().total_memory`), by SkyPilot
accelerator name, rounded down; a name missing here is checked on the box only."""

TRAINING_STAGES = {"base_checkpoint": "pretrain", "sft_checkpoint": "sft", "dpo_checkpoint": "dpo"}
"""Launched training asset -> its training stage (also its config section)."""

MODEL_INPUT = {"sft": "base_checkpoint", "dpo": "sft_checkpoint"}
"""Where a fine-tuning stage's model shape comes from (the checkpoint it starts from);
pretraining reads it from its `model` section."""


class MemoryFitError(ValueError):
    """Even a micro-batch of 1 does not fit the card; the message has the numbers."""


# ---------------------------------------------------------------- counting live bytes

class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op creates, until the storage is freed; `peak`
    is the high-water mark. Views share their base's storage and are counted once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = id(storage)
        if key in self._counted:
            return
        size = storage.nbytes()
        self._counted.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self.live -= size
        self._counted.discard(key)


# ---------------------------------------------------------------- the step

def _random_rows(rows: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), dtype=torch.long)


def micro_batch(stage: str, rows: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    """A micro-batch with the keys, shapes and dtypes the stage's data source yields. Values
    are random: memory does not depend on them (DPO runs with static shapes, untrimmed)."""
    if stage == "dpo":
        full = torch.full((rows,), length, dtype=torch.long)
        return {"chosen_idx": _random_rows(rows, length, vocab),
                "chosen_targets": _random_rows(rows, length, vocab),
                "rejected_idx": _random_rows(rows, length, vocab),
                "rejected_targets": _random_rows(rows, length, vocab),
                "chosen_len": full, "rejected_len": full.clone(),
                "ref_chosen": torch.zeros(rows), "ref_rejected": torch.zeros(rows)}
    batch = {"idx": _random_rows(rows, length, vocab), "targets": _random_rows(rows, length, vocab)}
    if stage == "sft":  # four packed documents per block
        batch["doc_ids"] = (torch.arange(length) * 4 // length).expand(rows, length).contiguous()
    return batch


class _SyntheticData:
    """The Trainer's data source for the estimate: a fresh micro-batch per (step, micro)."""

    def __init__(self, stage: str, rows: int, length: int, vocab: int) -> None:
        self.stage, self.rows, self.length, self.vocab = stage, rows, length, vocab

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        return micro_batch(self.stage, self.rows, self.length, self.vocab)


def stage_length(stage: str, model_cfg: GPTConfig, train_cfg) -> int:
    """Tokens per row: pretraining's seq_len; packed SFT blocks and DPO pairs are at most
    block_size (DPO pads to its longest pair, which the worst case takes as a full block)."""
    return seq_len(train_cfg, model_cfg) if stage == "pretrain" else model_cfg.block_size


def _built_in_place(model: torch.nn.Module) -> torch.nn.Module:
    """The model with `.to()` a no-op: it is created where it trains, and `Module.to` on fake
    parameters swaps tensors, which fake mode refuses (it holds weak references to them)."""
    model.to = lambda *args, **kwargs: model
    return model


def _objective(stage: str, train_cfg, fused_head: bool):
    """The objective the GPU runs (`fused_head=False`: the whole-logits head, for comparison).
    Packed SFT's attention is the dense mask either way (FlexAttention has no CPU backward):
    an upper bound, since FlexAttention keeps no (T, T) mask."""
    if stage != "dpo":
        return LMObjective(flex=False, chunked=fused_head)
    objective = DPOObjective(None, beta=train_cfg.dpo_beta)  # stored reference log-probabilities
    objective.static_shapes = True  # full padded length: the worst case, and no data-dependent trim
    return objective


def _estimate_config(train_cfg, micro: int):
    """The stage's config as the estimate runs it: the given micro-batch, two micro-batches
    per step when the stage accumulates (so gradients are held during a forward), eager, and
    bf16 autocast unless the stage is set to float32 (`auto` is bf16 on every card with bf16,
    all of CARD_USABLE_BYTES; on the box `fit_to_device` passes what the card really runs)."""
    precision = "fp32" if train_cfg.precision == "fp32" else "bf16"
    return dataclasses.replace(train_cfg, batch_size=micro, grad_accum=min(train_cfg.grad_accum, 2),
                               compile="off", precision=precision, warmup_steps=0)


@dataclass(frozen=True)
class StepBytes:
    peak: int
    """Allocated bytes at the step's peak (tensors only)."""
    trained: int
    """Bytes of the trained model's parameters (its gradients and each AdamW moment match)."""
    frozen: int = 0
    """Bytes of frozen weights (DPO's reference model)."""


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def measure_step(stage: str, model_cfg: GPTConfig, train_cfg, micro: int, *,
                 fake: bool = True, fused_head: bool = True) -> StepBytes:
    """Bytes of two optimizer steps of the stage on CPU, on fake tensors or (fake=False) on
    real ones. Everything, model included, is created while the count runs, so nothing
    escapes it. `fused_head=False` measures the whole-logits head instead of the chunked one."""
    if stage not in TRAINING_STAGES.values():
        raise ValueError(f"unknown training stage {stage!r}; one of {sorted(TRAINING_STAGES.values())}")
    cfg = _estimate_config(train_cfg, micro)
    length = stage_length(stage, model_cfg, train_cfg)
    counter = LiveBytes()
    fake_mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with fake_mode, counter:
        model = _built_in_place(GPT(model_cfg))
        objective = _objective(stage, train_cfg, fused_head)
        data = _SyntheticData(stage, micro, length, model_cfg.vocab_size)
        trainer = Trainer(model, objective, data, cfg, Runtime(torch.device("cpu")), max_steps=2,
                          checkpointer=None, logger=None, tokens_per_micro=lambda batch: 0)
        for step in range(2):
            trainer.train_step(step)
        reference = getattr(objective, "reference", None)
        sizes = StepBytes(0, _param_bytes(model), _param_bytes(reference) if reference is not None else 0)
        del trainer, model, objective, reference
    return dataclasses.replace(sizes, peak=counter.peak)


# ---------------------------------------------------------------- the estimate

@dataclass(frozen=True)
class Estimate:
    stage: str
    micro_batch: int
    length: int
    step: StepBytes
    world_size: int = 1

    @property
    def peak_bytes(self) -> int:
        return self.step.peak

    @property
    def model_state_bytes(self) -> int:
        """Params, gradients and AdamW's two moments (four copies of the trained weights),
        and the frozen reference for DPO; part of the peak."""
        return 4 * self.step.trained + self.step.frozen

    @property
    def activation_bytes(self) -> int:
        """Everything else held at the peak: activations, logits, temporaries."""
        return self.peak_bytes - self.model_state_bytes

    @property
    def ddp_bytes(self) -> int:
        """DDP's gradient buckets on several GPUs: one more copy of the gradients."""
        return self.step.trained if self.world_size > 1 else 0

    @property
    def total_bytes(self) -> int:
        """What the card must hold: the tensors with the allocator's reserve, and the context."""
        return int((self.peak_bytes + self.ddp_bytes) * ALLOCATOR_RESERVE) + CUDA_CONTEXT_BYTES


_MEASURED: dict[tuple, StepBytes] = {}
"""measure_step's answers by what the step's memory depends on (a few seconds each at 124m)."""


def estimate(stage: str, model_cfg: GPTConfig, train_cfg, micro: int | None = None, *,
             world_size: int = 1) -> Estimate:
    """Peak GPU memory of one rank training `stage` at micro-batch `micro` (default: the
    configured batch_size). Cached per (stage, model shape, length, micro-batch, precision)."""
    micro = micro or train_cfg.batch_size
    length = stage_length(stage, model_cfg, train_cfg)
    cfg = _estimate_config(train_cfg, micro)
    key = (stage, tuple(sorted(as_dict(model_cfg).items())), length, micro, cfg.grad_accum, cfg.precision)
    if key not in _MEASURED:
        _MEASURED[key] = measure_step(stage, model_cfg, train_cfg, micro)
    return Estimate(stage, micro, length, _MEASURED[key], world_size)


# ---------------------------------------------------------------- fitting the card

@dataclass(frozen=True)
class MemoryPlan:
    stage: str
    card_bytes: int
    batch_size: int
    """Configured micro-batch."""
    grad_accum: int
    """Configured micro-batches per optimizer step."""
    estimate: Estimate
    """At the chosen micro-batch."""

    @property
    def micro_batch(self) -> int:
        return self.estimate.micro_batch

    @property
    def split(self) -> int:
        """Parts each configured micro-batch is cut into (1: unchanged)."""
        return self.batch_size // self.micro_batch

    @property
    def adjusted(self) -> bool:
        return self.split > 1

    def describe(self) -> str:
        e, card = self.estimate, self.card_bytes / GIB
        line = (f"[memory] {self.stage}: micro-batch {e.micro_batch} x {e.length} tokens needs "
                f"~{e.total_bytes / GIB:.1f} GiB of {card:.1f} GiB")
        if not self.adjusted:
            return line + f"; fits at {self.batch_size} x grad_accum {self.grad_accum}"
        return (line + f"; lowered from batch_size {self.batch_size} x grad_accum {self.grad_accum} "
                f"to {self.micro_batch} x {self.grad_accum * self.split} (the global batch of "
                f"{self.batch_size * self.grad_accum} rows is kept)")


def plan_micro_batch(stage: str, model_cfg: GPTConfig, train_cfg, card_bytes: int, *,
                     world_size: int = 1) -> MemoryPlan:
    """The largest micro-batch dividing the configured one whose estimate fits `card_bytes`;
    MemoryFitError with the numbers when not even 1 fits."""
    def at(micro: int) -> Estimate:
        return estimate(stage, model_cfg, train_cfg, micro, world_size=world_size)

    def fits(micro: int) -> bool:
        return at(micro).total_bytes <= card_bytes

    batch = train_cfg.batch_size
    smaller = [d for d in range(1, batch) if batch % d == 0]
    micro = batch if fits(batch) else _largest_fitting(smaller, fits)
    if micro is None:
        raise MemoryFitError(_refusal(stage, at(1), card_bytes))
    return MemoryPlan(stage, card_bytes, batch, train_cfg.grad_accum, at(micro))


def _largest_fitting(ascending: list[int], fits) -> int | None:
    """Binary search (memory grows with the micro-batch), so a few estimates settle it."""
    best, lo, hi = None, 0, len(ascending) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(ascending[mid]):
            best, lo = ascending[mid], mid + 1
        else:
            hi = mid - 1
    return best


def _refusal(stage: str, e: Estimate, card_bytes: int) -> str:
    return (f"{stage} does not fit a {card_bytes / GIB:.1f} GiB card even at micro-batch 1: "
            f"{e.total_bytes / GIB:.1f} GiB needed (model state {e.model_state_bytes / GIB:.2f} GiB, "
            f"activations {e.activation_bytes / GIB:.2f} GiB at 1 x {e.length} tokens, "
            + (f"DDP buckets {e.ddp_bytes / GIB:.2f} GiB, " if e.ddp_bytes else "")
            + f"x{ALLOCATOR_RESERVE} allocator reserve, "
            f"{CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context). Rent a larger card (the task's "
            "`accelerators`), or train a smaller model shape or a shorter `seq_len`.")


def fitted_config(train_cfg, plan: MemoryPlan):
    """The training config the Trainer runs: the plan's micro-batch and accumulation."""
    return dataclasses.replace(train_cfg, batch_size=plan.micro_batch,
                               grad_accum=train_cfg.grad_accum * plan.split)


class SplitBatches:
    """A data source whose micro-batch m is part m % split of the wrapped source's
    micro-batch m // split: the same rows per optimizer step, in smaller pieces."""

    def __init__(self, data, split: int) -> None:
        self.data, self.split = data, split
        self._last: tuple[tuple[int, int], dict] | None = None

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        whole = self._whole(step, micro // self.split)
        part = micro % self.split
        rows = next(iter(whole.values())).shape[0] // self.split
        return {k: v[part * rows:(part + 1) * rows] for k, v in whole.items()}

    def _whole(self, step: int, micro: int) -> dict:
        """The wrapped micro-batch, kept while its parts are taken one after the other."""
        if self._last is None or self._last[0] != (step, micro):
            self._last = ((step, micro), self.data.batch(step, micro))
        return self._last[1]

    def __getattr__(self, name: str) -> Any:  # n, eval_batches, ...: the wrapped source's
        if name == "data":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)


def _plan_or_none(make_plan) -> MemoryPlan | None:
    """The plan; None, with a warning, when the estimate itself fails (an op fake tensors do
    not support, say): the stage then trains as configured. Not fitting is still an error."""
    try:
        return make_plan()
    except MemoryFitError:
        raise
    except Exception as e:  # the estimate is a safeguard; its own failure must not stop training
        warnings.warn(f"memory estimate failed ({type(e).__name__}: {e}); training at the "
                      "configured micro-batch", stacklevel=3)
        return None


def fit_to_device(stage: str, model_cfg: GPTConfig, train_cfg, data, runtime: Runtime):
    """On a CUDA device: (training config, data source) that fit its memory, and a log line
    when the micro-batch was lowered. Elsewhere the inputs unchanged."""
    if not runtime.is_cuda:
        return train_cfg, data
    card = torch.cuda.get_device_properties(runtime.device).total_memory
    as_run = train_cfg
    if runtime.with_precision(train_cfg.precision).autocast_dtype is None:  # a card without bf16
        as_run = dataclasses.replace(train_cfg, precision="fp32")
    plan = _plan_or_none(lambda: plan_micro_batch(stage, model_cfg, as_run, card,
                                                  world_size=runtime.world_size))
    if plan is not None and runtime.is_main:
        print(plan.describe(), flush=True)
    if plan is None or not plan.adjusted:
        return train_cfg, data
    return fitted_config(train_cfg, plan), SplitBatches(data, plan.split)


# ---------------------------------------------------------------- before launch

def card_bytes(accelerators: str | dict | None) -> tuple[int | None, int]:
    """(usable bytes per card or None if unknown, GPU count) from a task's `accelerators`
    (`RTX4090`, `RTX4090:4` or `{RTX4090: 4}`)."""
    if not accelerators:
        return None, 1
    if isinstance(accelerators, dict):
        name, count = next(iter(accelerators.items()))
    else:
        name, _, count = str(accelerators).partition(":")
    return CARD_USABLE_BYTES.get(str(name).strip().upper()), int(float(count or 1))


def _spec_path(cli_args: Sequence[str]) -> Path | None:
    args = [str(a) for a in cli_args]
    return Path(args[args.index("--spec") + 1]) if "--spec" in args else None


def preflight(asset: str, cli_args: Sequence[str], accelerators) -> MemoryPlan | None:
    """Before renting: the memory plan of a launched training stage on the task's card, read
    from its spec (`--spec FILE` in `cli_args`, with local input paths). None when the asset
    does not train or the card is unknown; MemoryFitError when it cannot fit."""
    from wikigpt_core.model_io import read_config
    from wikigpt_core.spec import StageSpec

    stage, path = TRAINING_STAGES.get(asset), _spec_path(cli_args)
    card, count = card_bytes(accelerators)
    if stage is None or path is None or card is None:
        return None

    def plan() -> MemoryPlan:
        spec = StageSpec.read(path)
        model_cfg = (spec.section("model") if stage == "pretrain"
                     else read_config(spec.input(MODEL_INPUT[stage])))
        return plan_micro_batch(stage, model_cfg, spec.section(stage), card, world_size=count)

    return _plan_or_none(plan)


# ---------------------------------------------------------------- the table

def table(settings, card: int) -> list[str]:
    """A row per training stage of the profile: the estimate at the configured micro-batch and
    the plan for `card` bytes."""
    rows = [f"{'stage':<9}{'micro-batch':>16}{'params+grads+AdamW':>20}{'activations':>13}"
            f"{'total':>9}{'card':>8}  plan"]
    for stage in ("pretrain", "sft", "dpo"):
        train_cfg = settings.section(stage)
        e = estimate(stage, settings.model, train_cfg)
        try:
            plan = plan_micro_batch(stage, settings.model, train_cfg, card).describe()
        except MemoryFitError as err:
            plan = f"refused: {err}"
        rows.append(f"{stage:<9}{f'{e.micro_batch} x {e.length}':>16}"
                    f"{e.model_state_bytes / GIB:>17.2f} GiB{e.activation_bytes / GIB:>9.2f} GiB"
                    f"{e.total_bytes / GIB:>5.1f} GiB{card / GIB:>5.1f} GiB  "
                    f"{'fits' if e.total_bytes <= card else plan}")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from wikigpt_core.config import load_settings

    parser = argparse.ArgumentParser(description="Estimate each training stage's peak GPU memory.")
    parser.add_argument("--profile", default="124m")
    parser.add_argument("--card", default="RTX4090", help=f"one of {', '.join(CARD_USABLE_BYTES)}")
    args = parser.parse_args(argv)
    card, _ = card_bytes(args.card)
    if card is None:
        parser.error(f"unknown card {args.card!r}; known: {', '.join(CARD_USABLE_BYTES)}")
    print("\n".join(table(load_settings(args.profile, env=False), card)))
    print(f"total = (peak tensors) x {ALLOCATOR_RESERVE} allocator reserve + "
          f"{CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context; eager (compile off), bf16 autocast")


if __name__ == "__main__":
    main()

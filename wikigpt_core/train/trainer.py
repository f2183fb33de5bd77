"""The one training loop, shared by pretraining, SFT and DPO.

`Trainer(...)` gathers the model, an objective, a data source addressed by (step, micro), the
optimizer and cosine schedule, a checkpointer and a metric logger; `train()` restores the last
checkpoint if any, runs `train_step()` to `max_steps`, evaluates, samples, checkpoints and
returns the final figures.

Precision and compile come from the config (`cfg.precision`, `cfg.compile`, `cfg.compile_mode`,
`cfg.attention`): the objective runs under the runtime's autocast and the preferred SDPA
backends, and with compile the forward is `torch.compile(model, mode=..., dynamic=False)`
(inside DDP, whose all-reduce happens once per optimizer step anyway: every micro-batch but
the last runs under no_sync). Evaluation and samples use the plain module, so they never
trigger a recompile of the training graph.

Gradient accumulation: `grad_accum` micro-batches per optimizer step in total over all ranks;
rank r runs micro-batches r, r+W, ... and DDP averages gradients across ranks, so the update
equals the single-process one on the same global batch. Only rank 0 writes.

Nothing bad is kept: a NaN or infinite loss or gradient norm stops training with
`NonFiniteTrainingError` before any checkpoint of it is written, so the stage fails, publishes
nothing and leaves the last good checkpoint in the work dir. Checkpoints come every
`ckpt_interval` steps and, by wall time, every `ckpt_minutes`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from wikigpt_core.pipes_bridge import TOTAL_STEPS
from wikigpt_core.train.checkpoint import Checkpointer
from wikigpt_core.train.metrics import MetricLogger, gpu_peak_flops
from wikigpt_core.train.runtime import (Runtime, attention_context, build_optimizer, compile_model,
                                       should_compile, wrap_ddp)
from wikigpt_core.train.schedule import CosineSchedule


MUST_BE_FINITE = ("loss/train", "grad_norm")
"""Metrics that stop training when they are NaN or infinite."""
_CLOCK_FLAG = "_ckpt_clock"  # rides in the metrics all-reduce; never logged


class NonFiniteTrainingError(RuntimeError):
    """The training loss or gradient norm became NaN or infinite."""


@dataclass
class TrainState:
    step: int = 0
    initial_loss: float | None = None
    tokens: int = 0
    seconds: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    """Metrics of the most recent logging window (averaged over its steps)."""


class Trainer:
    def __init__(self, model: torch.nn.Module, objective, data, cfg, runtime: Runtime, *,
                 max_steps: int, checkpointer: Checkpointer, logger: MetricLogger,
                 evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
                 sample: Callable[[torch.nn.Module], str] | None = None,
                 tokens_per_micro: Callable[[dict], int] | None = None,
                 flops_per_token: float | None = None, run_extra: dict[str, Any] | None = None):
        if cfg.grad_accum % runtime.world_size:
            raise ValueError(f"grad_accum={cfg.grad_accum} must be divisible by the world size "
                             f"{runtime.world_size} (it counts micro-batches over all ranks)")
        runtime = runtime.with_precision(cfg.precision)  # autocast() now follows the config
        self.cfg, self.runtime, self.objective, self.data = cfg, runtime, objective, data
        self.max_steps = max_steps
        self.model = model.to(runtime.device)  # the plain module: saved, evaluated, sampled
        self.optimizer = build_optimizer(self.model, cfg, runtime)
        self.schedule = CosineSchedule(cfg.lr, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
        self.checkpointer, self.logger = checkpointer, logger
        self.evaluate_fn, self.sample_fn = evaluate, sample
        self.tokens_per_micro = tokens_per_micro or (lambda b: int(b["idx"].numel()))
        self.flops_per_token = flops_per_token
        self.peak = gpu_peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.is_cuda else None
        self.run_extra = run_extra or {}
        self.state = TrainState()
        fwd = self.model
        self.compiled = should_compile(cfg.compile, runtime)
        if self.compiled:
            fwd = compile_model(fwd, cfg.compile_mode)  # DPO's length buckets: one graph each
        if runtime.distributed:
            fwd = wrap_ddp(fwd, runtime)
        self.forward_model = fwd  # what the objective calls during training
        self.micros = list(range(runtime.rank, cfg.grad_accum, runtime.world_size))

    # ------------------------------------------------------------------ loop

    def train(self) -> TrainState:
        self._restore()
        window: dict[str, torch.Tensor] = {}
        steps_in_window, window_s, window_tokens = 0, 0.0, 0
        while self.state.step < self.max_steps:
            t0 = time.perf_counter()
            metrics, tokens = self.train_step(self.state.step)
            self.state.step += 1
            step, final = self.state.step, self.state.step == self.max_steps
            for k, v in metrics.items():  # device tensors: no host sync until a log step
                window[k] = window[k] + v if k in window else v
            steps_in_window += 1
            window_tokens += tokens
            self.state.tokens += tokens
            logging = step % self.cfg.log_interval == 0 or final or step == 1
            clock_due = False
            if logging:
                row, clock_due = self._reduce_window(window, steps_in_window, step)
            dt = time.perf_counter() - t0  # on a log step the reduce has synchronised the device
            window_s += dt
            self.state.seconds += dt
            if logging:
                self._account(row, window_tokens, window_s, steps_in_window, step)
                window, steps_in_window, window_s, window_tokens = {}, 0, 0.0, 0
            # Evaluation, samples and checkpoints are outside the timed window.
            if self.evaluate_fn and (step % self.cfg.eval_interval == 0 or final):
                self.state.last.update(self._evaluate(step))
            if self.sample_fn and self.runtime.is_main and (step % self.cfg.sample_interval == 0 or final):
                self._log({"sample": self._sample()}, step)
            if self.checkpointer.due(step, final, clock_due):
                if not logging:  # steps since the last log step are unchecked: never save them blind
                    self._reduce_window(window, steps_in_window, step)
                self._save(step)
        return self.state

    def _reduce_window(self, window: dict[str, torch.Tensor], steps: int,
                       step: int) -> tuple[dict[str, float], bool]:
        """The window's metrics averaged over its steps and the ranks, checked finite, and
        whether any rank's checkpoint clock ran out: one all-reduce and one host sync, so
        every rank reaches the same answers.

        Finiteness is checked here rather than every step because reading a value back costs a
        host sync; a window is reduced on every log step and before every checkpoint, and a
        non-finite value stays non-finite in the window's sum, so no bad state is ever saved
        or returned for publishing."""
        flag = torch.tensor(float(self.checkpointer.clock_due()), device=self.runtime.device)
        means = self._reduce({**window, _CLOCK_FLAG: flag})
        clock_due = means.pop(_CLOCK_FLAG) > 0  # the mean over ranks is > 0 when any rank's is
        row = {k: v / steps for k, v in means.items()}
        self._check_finite(row, step, steps)
        return row, clock_due

    def _check_finite(self, row: dict[str, float], step: int, steps: int) -> None:
        bad = {k: row[k] for k in MUST_BE_FINITE if k in row and not math.isfinite(row[k])}
        if not bad:
            return
        figures = ", ".join(f"{k} = {v}" for k, v in bad.items())
        span = f"step {step}" if steps == 1 else f"steps {step - steps + 1}-{step}"
        latest = self.checkpointer.checkpoints()
        kept = (f"the last good checkpoint {latest[-1]} is kept (a rerun with the same config resumes "
                "there)") if latest else "no earlier checkpoint exists"
        raise NonFiniteTrainingError(
            f"training diverged: {figures} at {span} of {self.max_steps}. "
            f"Nothing was saved or published from it; {kept}. Lower lr (now {self.cfg.lr}) or "
            f"lengthen warmup_steps (now {self.cfg.warmup_steps}), and check the inputs: a "
            "corrupted base checkpoint or training data gives the same.")

    def _account(self, row: dict[str, float], tokens: int, seconds: float, steps: int, step: int) -> None:
        """Throughput figures for a logging window, then log it."""
        if self.state.initial_loss is None:
            self.state.initial_loss = row["loss/train"]  # step 1 is always its own window
        row["lr"] = self.schedule(step - 1)
        row["tps"] = tokens / max(seconds, 1e-9)
        row["time/step_ms"] = 1000 * seconds / steps
        row["tokens"] = self.state.tokens
        row[TOTAL_STEPS] = self.max_steps  # known here even when the config sets epochs
        if self.flops_per_token and self.peak:
            row["mfu"] = row["tps"] * self.flops_per_token / (self.peak * self.runtime.world_size)
        self.state.last = row
        self._log(row, step)

    def train_step(self, step: int) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step over this rank's micro-batches. Returns this rank's metrics as
        device tensors (averaged over its micro-batches) and the tokens processed globally."""
        model, opt = self.forward_model, self.optimizer
        model.train()
        lr = self.schedule(step)
        for group in opt.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        tokens = 0
        n = len(self.micros)
        for i, micro in enumerate(self.micros):
            cpu_batch = self.data.batch(step, micro)
            tokens += self.tokens_per_micro(cpu_batch)
            batch = {k: v.to(self.runtime.device, non_blocking=True) for k, v in cpu_batch.items()}
            # Under DDP, gradients are all-reduced only on the last micro-batch.
            ctx = model.no_sync() if self.runtime.distributed and i < n - 1 else contextlib.nullcontext()
            with ctx, attention_context(self.cfg.attention, self.runtime.device):
                with self.runtime.autocast():
                    loss, mets = self.objective(model, batch)
                (loss / n).backward()
            for k, v in {"loss/train": loss, **mets}.items():
                v = v.detach().float() / n
                sums[k] = sums[k] + v if k in sums else v
        sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip).float()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sums, tokens * self.runtime.world_size

    # ------------------------------------------------------------------ helpers

    def _reduce(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Average metrics over ranks (one all-reduce), as Python floats (one host sync)."""
        keys = sorted(sums)
        vec = torch.stack([sums[k].reshape(()) for k in keys])
        if self.runtime.distributed:
            torch.distributed.all_reduce(vec)
            vec /= self.runtime.world_size
        return {k: float(v) for k, v in zip(keys, vec.tolist())}

    def _evaluate(self, step: int) -> dict[str, float]:
        self.model.eval()
        with self.runtime.autocast():
            mets = self.evaluate_fn(self.model)
        if "loss/val" in mets:
            mets["ppl/val"] = math.exp(min(mets["loss/val"], 50.0))
        self._log(mets, step)
        return mets

    def _sample(self) -> str:
        self.model.eval()
        with self.runtime.autocast():
            return self.sample_fn(self.model)

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if self.runtime.is_main:
            self.logger.log(metrics, step)

    def _save(self, step: int) -> None:
        extra = {"initial_loss": self.state.initial_loss, "tokens": self.state.tokens,
                 "seconds": self.state.seconds, "data_position": step,
                 "last": {k: float(v) for k, v in self.state.last.items() if isinstance(v, (int, float))},
                 **self.run_extra}
        self.checkpointer.save(step, self.model, self.optimizer, extra)
        self.runtime.barrier()

    def _restore(self) -> None:
        state = self.checkpointer.load_latest(self.model, self.optimizer)
        if self.runtime.is_main:
            self.logger.resume(None if state is None else int(state["data_position"]))
        if state is None:
            return
        self.state.step = int(state["data_position"])
        self.state.initial_loss = state.get("initial_loss")
        self.state.tokens = int(state.get("tokens", 0))
        self.state.seconds = float(state.get("seconds", 0.0))
        self.state.last = dict(state.get("last", {}))
        self._log({"resumed_from": self.state.step}, self.state.step)

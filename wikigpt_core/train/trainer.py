"""The one training loop, shared by pretraining, SFT and DPO.

`Trainer(...)` gathers the model, an objective, a data source addressed by (step, micro), the
optimizer and cosine schedule, a checkpointer and a metric logger; `train()` restores the last
checkpoint if any, runs `train_step()` to `max_steps`, evaluates, samples, checkpoints and
returns the final figures.

Precision and compile come from the config (`cfg.precision`, `cfg.compile`): the objective
runs under the runtime's autocast, and with compile the forward is `torch.compile(model)`
(inside DDP, whose all-reduce happens once per optimizer step anyway: every micro-batch but
the last runs under no_sync). Evaluation and samples use the plain module, so they never
trigger a recompile of the training graph.

Gradient accumulation: `grad_accum` micro-batches per optimizer step in total over all ranks;
rank r runs micro-batches r, r+W, ... and DDP averages gradients across ranks, so the update
equals the single-process one on the same global batch. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from wikigpt_core.pipes_bridge import TOTAL_STEPS
from wikigpt_core.train.checkpoint import Checkpointer
from wikigpt_core.train.metrics import MetricLogger, gpu_peak_flops
from wikigpt_core.train.runtime import Runtime, build_optimizer, should_compile
from wikigpt_core.train.schedule import CosineSchedule


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
            fwd = torch.compile(fwd)
            if hasattr(objective, "static_shapes"):
                # Every new input shape would be a recompile: keep each micro-batch the same shape.
                objective.static_shapes = True
        if runtime.distributed:
            # Buffers are only the RoPE tables, identical everywhere: no per-step broadcast.
            fwd = DDP(fwd, device_ids=[runtime.device.index] if runtime.is_cuda else None,
                      forward_sync_buffers=False)
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
            if logging:
                row = {k: v / steps_in_window for k, v in self._reduce(window).items()}
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
            if self.checkpointer.due(step, final):
                self._save(step)
        return self.state

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
            with ctx:
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

"""The shared shape of a training stage: resume key -> Trainer -> artifact.

`run_training(...)` builds the checkpointer (work dir keyed by config + inputs), the metric
logger (log.jsonl and offline W&B under the work dir), runs the Trainer, and on rank 0
publishes the artifact (model.safetensors, config.json, and tokenizer.json when the stage was
given a tokenizer; the run record run/metrics.json and run/log.jsonl, outside the content hash,
since they hold timings) through ArtifactWriter; then it clears the scratch.

`prepare(run_dir)`, when given, runs once the run's work dir exists and before training: what
a stage computes once per run and keeps beside its checkpoints (DPO's reference
log-probabilities), so a resumed run finds it there and the scratch clean-up removes it.
The kernel settings (`compile_mode`, `attention`) are recorded in the stats.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from wikigpt_core.artifacts import RUN_DIR, ArtifactWriter, StageResult, atomic_write_json
from wikigpt_core.model_io import save_model
from wikigpt_core.tokenizer import TOKENIZER_FILE
from wikigpt_core.train.checkpoint import Checkpointer, run_key
from wikigpt_core.train.config import as_dict, key_payload
from wikigpt_core.train.memory import fit_to_device
from wikigpt_core.train.metrics import MetricLogger, MetricsCallback
from wikigpt_core.train.runtime import Runtime
from wikigpt_core.train.trainer import Trainer, TrainState

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"


def training_log(checkpoint_dir: Path) -> Path:
    """A checkpoint's metrics and samples log (one JSON object per line)."""
    return Path(checkpoint_dir) / RUN_DIR / LOG_FILE


def run_training(stage: str, *, model: torch.nn.Module, objective, data, train_cfg, runtime: Runtime,
                 max_steps: int, inputs: dict[str, Path], out: Path, work: Path,
                 on_metrics: MetricsCallback | None,
                 summarize: Callable[[TrainState], dict[str, Any]],
                 evaluate=None, sample=None, tokens_per_micro=None, flops_per_token=None,
                 tokenizer_dir: Path | None = None,
                 prepare: Callable[[Path], None] | None = None) -> StageResult:
    payload = key_payload(stage, model.config, train_cfg, inputs)
    key = run_key(payload)
    work = Path(work)
    ckpt = Checkpointer(work, key, train_cfg.ckpt_interval, train_cfg.keep_last_k, enabled=runtime.is_main,
                        minutes=train_cfg.ckpt_minutes)
    runtime.barrier()  # rank 0 has cleared stale keys before anyone reads
    if prepare is not None:
        prepare(ckpt.dir)
    logger = MetricLogger(work / key / LOG_FILE if runtime.is_main else None, on_metrics=on_metrics,
                          wandb_dir=work if runtime.is_main else None,  # survives clear()
                          run_name=f"{stage}-{key[:8]}", run_id=f"{stage}-{key}",
                          config=payload)
    # On a GPU, a micro-batch too big for the card is cut into parts (same rows per step), so
    # the run key, taken from the configured batch above, still names this run.
    step_cfg, data = fit_to_device(stage, model.config, train_cfg, data, runtime)
    trainer = Trainer(model, objective, data, step_cfg, runtime, max_steps=max_steps,
                      checkpointer=ckpt, logger=logger, evaluate=evaluate, sample=sample,
                      tokens_per_micro=tokens_per_micro, flops_per_token=flops_per_token)
    try:
        state = trainer.train()
    finally:
        logger.close()
    stats = {"steps": state.step, "seconds": round(state.seconds, 3), "checkpoints_saved": ckpt.saved,
             "compiled": trainer.compiled, "compile_mode": train_cfg.compile_mode,
             "attention": train_cfg.attention, **summarize(state)}
    if step_cfg is not train_cfg:  # the micro-batch was lowered to fit the card
        stats.update(micro_batch=step_cfg.batch_size, micro_batches_per_step=step_cfg.grad_accum)
    stats = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}  # no None
    result = StageResult(path=Path(out), content_hash="", stats=stats)
    if runtime.is_main:
        manifest_inputs = {k: v for k, v in payload["inputs"].items()}
        with ArtifactWriter(Path(out), stage=stage, config={"train": as_dict(train_cfg),
                                                            "model": as_dict(model.config)},
                            inputs=manifest_inputs) as w:
            save_model(trainer.model, w.dir)
            atomic_write_json(w.run_dir / METRICS_FILE, stats)
            shutil.copyfile(work / key / LOG_FILE, w.run_dir / LOG_FILE)
            if tokenizer_dir is not None:  # a checkpoint that carries its tokenizer is self-contained
                shutil.copyfile(Path(tokenizer_dir) / TOKENIZER_FILE, w.dir / TOKENIZER_FILE)
            w.stats.update(stats)
            if logger.wandb_run:  # manifest only: the offline dir name has a timestamp, the bytes must not
                w.stats["wandb_run"] = logger.wandb_run
        result = w.result
        ckpt.clear()
    runtime.barrier()
    return result

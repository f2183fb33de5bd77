"""Pretraining stage: token shards -> base checkpoint.

    python -m wikigpt_core.run base_checkpoint --spec FILE
    torchrun --nproc_per_node 4 -m wikigpt_core.run base_checkpoint --spec FILE   # DDP

Random seq_len windows from train.bin (np.memmap), next-token loss, val loss on a fixed set
of val.bin windows every eval_interval steps, a sample every sample_interval steps.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from wikigpt_core.artifacts import StageResult
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.train.config import seq_len
from wikigpt_core.train.data import DataError, TokenShards, read_shards_meta
from wikigpt_core.train.metrics import MetricsCallback, flops_per_token
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.runtime import setup_runtime
from wikigpt_core.train.samples import document_sampler
from wikigpt_core.train.stage import run_training

EVAL_STREAM = 1  # val windows use their own seed stream, fixed across evaluations


def run_pretrain(model_cfg: GPTConfig, train_cfg, shards_dir: Path, out: Path, work: Path,
                 on_metrics: MetricsCallback | None = None, *, device: str | None = None,
                 tokenizer_dir: Path | None = None) -> StageResult:
    """Train a GPT from scratch on `shards_dir/{train,val}.bin`; publish it at `out`."""
    shards_dir = Path(shards_dir)
    meta = read_shards_meta(shards_dir)
    if meta["vocab_size"] > model_cfg.vocab_size:
        raise DataError(f"{shards_dir}/meta.json vocab_size={meta['vocab_size']} exceeds the model's "
                        f"vocab_size={model_cfg.vocab_size}; align tokenizer and model settings")
    runtime = setup_runtime(device)
    T = seq_len(train_cfg, model_cfg)
    train = TokenShards(shards_dir / "train.bin", T, train_cfg.batch_size, train_cfg.seed)
    val = TokenShards(shards_dir / "val.bin", T, train_cfg.batch_size, train_cfg.seed)
    torch.manual_seed(train_cfg.seed)  # identical init on every rank
    model = GPT(model_cfg)
    objective = LMObjective()

    def evaluate(m):
        return objective.evaluate(m, (_to(val.batch(0, i, EVAL_STREAM), runtime.device)
                                      for i in range(train_cfg.eval_iters)))

    sample = _sampler(tokenizer_dir, runtime.device, train_cfg.seed)

    def summarize(state):
        val_loss = state.last.get("loss/val")
        return {"tokens_trained": state.tokens, "initial_loss": state.initial_loss,
                "train_loss": state.last.get("loss/train"), "val_loss": val_loss,
                "val_ppl": math.exp(val_loss) if val_loss is not None else None,
                "tokens_per_s": round(state.tokens / max(state.seconds, 1e-9), 1),
                "params": model.num_params(), "mfu": state.last.get("mfu")}

    return run_training(
        "pretrain", model=model, objective=objective, data=train, train_cfg=train_cfg,
        runtime=runtime, max_steps=train_cfg.max_steps, inputs={"shards": shards_dir},
        out=out, work=work, on_metrics=on_metrics, summarize=summarize,
        tokenizer_dir=tokenizer_dir, evaluate=evaluate,
        sample=sample, flops_per_token=flops_per_token(model.num_params(), model_cfg.n_layer,
                                                       model_cfg.n_embd, T))


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _sampler(tokenizer_dir: Path | None, device, seed: int):
    tok = None
    if tokenizer_dir is not None:
        from wikigpt_core.tokenizer import WikiTokenizer
        tok = WikiTokenizer.load(tokenizer_dir)
    return document_sampler(tok, device, seed)

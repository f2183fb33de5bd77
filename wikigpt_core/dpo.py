"""DPO stage: SFT checkpoint + preference pairs -> DPO checkpoint.

    python -m wikigpt_core.run dpo_checkpoint --spec FILE

Each pair is rendered as the generation prompt (docs/reference.md, "Chat format") followed by
a response (its content
tokens + <|end|>). The policy starts from the SFT model; a frozen copy of the SFT model is the
reference. Its log-probabilities never change, so they are computed once, in one pass before
training, and stored with the run (`<work>/<run key>/reference_logps.pt`, beside the
checkpoints; a resumed run reads them back); each step then runs the policy alone.
Sequence log-probs sum over response tokens only; the loss is
-log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]) with beta =
train_cfg.dpo_beta. Logged: loss, reward accuracy, chosen/rejected implicit rewards, margin.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from wikigpt_core.artifacts import StageResult
from wikigpt_core.model_io import load_model
from wikigpt_core.tokenizer import WikiTokenizer
from wikigpt_core.train.config import derive_max_steps
from wikigpt_core.train.data import BlockBatches, DataError, encode_pairs, pair_tensors, read_jsonl
from wikigpt_core.train.metrics import MetricsCallback, flops_per_token
from wikigpt_core.train.objectives import REFERENCE_KEYS, DPOObjective, reference_logps
from wikigpt_core.train.runtime import Runtime, setup_runtime
from wikigpt_core.train.samples import chat_sampler
from wikigpt_core.train.stage import run_training

PAIRS_FILE = "pairs.jsonl"
REFERENCE_FILE = "reference_logps.pt"


def run_dpo(train_cfg, sft_dir: Path, preference_dir: Path, tokenizer_dir: Path, out: Path,
            work: Path, on_metrics: MetricsCallback | None = None, *,
            device: str | None = None) -> StageResult:
    """Align the SFT model at `sft_dir` on `preference_dir/pairs.jsonl` with DPO."""
    preference_dir = Path(preference_dir)
    tok = WikiTokenizer.load(tokenizer_dir)
    runtime = setup_runtime(device)
    policy = load_model(sft_dir).train()
    pairs, pstats = encode_pairs(preference_dir / PAIRS_FILE, tok, policy.config.block_size)
    if not pairs:
        raise DataError(f"{preference_dir / PAIRS_FILE} has no usable pairs "
                        f"({pstats.dropped_too_long} dropped as longer than the context)")
    tensors = pair_tensors(pairs, tok.end_id)
    data = BlockBatches(tensors, train_cfg.batch_size, train_cfg.grad_accum, train_cfg.seed)
    max_steps = derive_max_steps(train_cfg, data.n)
    objective = DPOObjective(None, beta=train_cfg.dpo_beta)  # the reference rides in the batches

    def prepare(run_dir: Path) -> None:
        tensors.update(stored_reference(run_dir / REFERENCE_FILE, tensors, sft_dir, train_cfg, runtime))

    def tokens(batch) -> int:  # real (unpadded) tokens in both sequences of each pair
        return int(batch["chosen_len"].sum() + batch["rejected_len"].sum())

    first = read_jsonl(preference_dir / PAIRS_FILE)[0]["prompt"]
    sample = chat_sampler(first, tok, runtime.device)

    def summarize(state):
        last = state.last
        return {"loss": last.get("loss/train"), "initial_loss": state.initial_loss,
                "reward_accuracy": last.get("dpo/reward_accuracy"),
                "chosen_reward": last.get("dpo/chosen_reward"),
                "rejected_reward": last.get("dpo/rejected_reward"),
                "margin": last.get("dpo/margin"), "pairs": pstats.pairs,
                "dropped_too_long": pstats.dropped_too_long, "beta": train_cfg.dpo_beta}

    cfg = policy.config
    return run_training(
        "dpo", model=policy, objective=objective, data=data, train_cfg=train_cfg, runtime=runtime,
        max_steps=max_steps, inputs={"sft": Path(sft_dir), "preferences": preference_dir,
                                     "tokenizer": Path(tokenizer_dir)},
        out=out, work=work, on_metrics=on_metrics, summarize=summarize,
        tokenizer_dir=Path(tokenizer_dir), tokens_per_micro=tokens, sample=sample, prepare=prepare,
        flops_per_token=flops_per_token(policy.num_params(), cfg.n_layer, cfg.n_embd, cfg.block_size))


def stored_reference(path: Path, pairs: dict[str, torch.Tensor], sft_dir: Path, train_cfg,
                     runtime: Runtime) -> dict[str, torch.Tensor]:
    """The reference log-probabilities of every pair: read from `path` when a run (this one,
    resumed) stored them for the same pairs, else computed by rank 0 from the SFT model at
    `sft_dir` in the run's precision and written atomically. Every rank returns the same."""
    n = pairs["chosen_idx"].shape[0]
    if runtime.is_main and _stored_rows(path) != n:
        reference = load_model(sft_dir, device=runtime.device)
        precise = runtime.with_precision(train_cfg.precision)
        refs = reference_logps(reference, pairs, train_cfg.batch_size, runtime.device, precise.autocast)
        del reference  # its memory goes back before the policy trains
        tmp = path.with_name(f".tmp-{path.name}")
        torch.save(refs, tmp)
        os.replace(tmp, path)
    runtime.barrier()
    return torch.load(path, weights_only=True)


def _stored_rows(path: Path) -> int | None:
    """Pairs covered by a stored reference file, None when there is none (or it is unreadable)."""
    try:
        stored = torch.load(path, weights_only=True)
        return int(stored[REFERENCE_KEYS[0]].shape[0])
    except (OSError, RuntimeError, KeyError, EOFError):
        return None

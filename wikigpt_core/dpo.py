"""DPO stage: SFT checkpoint + preference pairs -> DPO checkpoint.

    python -m wikigpt_core.run dpo_checkpoint --spec FILE

Each pair is rendered as the generation prompt (docs/reference.md, "Chat format") followed by
a response (its content
tokens + <|end|>). The policy starts from the SFT model; a frozen copy of the SFT model is the
reference. Sequence log-probs sum over response tokens only; the loss is
-log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]) with beta =
train_cfg.dpo_beta. Logged: loss, reward accuracy, chosen/rejected implicit rewards, margin.
"""
from __future__ import annotations

from pathlib import Path

from wikigpt_core.artifacts import StageResult
from wikigpt_core.model_io import load_model
from wikigpt_core.tokenizer import WikiTokenizer
from wikigpt_core.train.config import derive_max_steps
from wikigpt_core.train.data import BlockBatches, DataError, encode_pairs, pair_tensors, read_jsonl
from wikigpt_core.train.metrics import MetricsCallback, flops_per_token
from wikigpt_core.train.objectives import DPOObjective
from wikigpt_core.train.runtime import setup_runtime
from wikigpt_core.train.samples import chat_sampler
from wikigpt_core.train.stage import run_training

PAIRS_FILE = "pairs.jsonl"


def run_dpo(train_cfg, sft_dir: Path, preference_dir: Path, tokenizer_dir: Path, out: Path,
            work: Path, on_metrics: MetricsCallback | None = None, *,
            device: str | None = None) -> StageResult:
    """Align the SFT model at `sft_dir` on `preference_dir/pairs.jsonl` with DPO."""
    preference_dir = Path(preference_dir)
    tok = WikiTokenizer.load(tokenizer_dir)
    runtime = setup_runtime(device)
    policy = load_model(sft_dir).train()
    reference = load_model(sft_dir, device=runtime.device)
    pairs, pstats = encode_pairs(preference_dir / PAIRS_FILE, tok, policy.config.block_size)
    if not pairs:
        raise DataError(f"{preference_dir / PAIRS_FILE} has no usable pairs "
                        f"({pstats.dropped_too_long} dropped as longer than the context)")
    data = BlockBatches(pair_tensors(pairs, tok.end_id), train_cfg.batch_size, train_cfg.grad_accum,
                        train_cfg.seed)
    max_steps = derive_max_steps(train_cfg, data.n)
    objective = DPOObjective(reference, beta=train_cfg.dpo_beta)

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
        tokenizer_dir=Path(tokenizer_dir), tokens_per_micro=tokens, sample=sample,
        flops_per_token=flops_per_token(policy.num_params(), cfg.n_layer, cfg.n_embd, cfg.block_size))

"""Supervised fine-tuning stage (docs/reference.md, "Chat format"): base checkpoint + SFT
dataset -> SFT checkpoint.

    python -m wikigpt_core.run sft_checkpoint --spec FILE

Each example is rendered with `chat.render_example` (user turns and <|assistant|> at -100,
assistant content and its closing <|end|> trained), packed greedily into block_size blocks,
tail padded with <|end|> at -100; examples longer than a block are dropped. Packed examples
never attend to each other (document masking) and their RoPE positions restart at 0, so a
packed block trains exactly like its examples run one at a time. A fresh AdamW is used.

With `replay_share` > 0, that share of the training examples are windows of the pretraining
shards (every token trained), spread evenly among the chat examples: the usual guard against
fine-tuning eroding the base model's language modelling.
"""
from __future__ import annotations

from pathlib import Path

from wikigpt_core.artifacts import StageResult
from wikigpt_core.doc_attention import blocks_skipped, document_block_mask, use_flex
from wikigpt_core.model_io import load_model
from wikigpt_core.tokenizer import WikiTokenizer
from wikigpt_core.train.config import derive_max_steps
from wikigpt_core.train.data import BlockBatches, DataError, pack_examples, read_jsonl, render_sft_file
from wikigpt_core.train.metrics import MetricsCallback, flops_per_token
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.runtime import setup_runtime
from wikigpt_core.train.samples import chat_sampler
from wikigpt_core.train.stage import run_training


def run_sft(train_cfg, base_dir: Path, sft_dataset_dir: Path, tokenizer_dir: Path, out: Path,
            work: Path, on_metrics: MetricsCallback | None = None, *,
            device: str | None = None, shards_dir: Path | None = None) -> StageResult:
    """Fine-tune the base model at `base_dir` on `sft_dataset_dir/{train,heldout}.jsonl`."""
    sft_dataset_dir = Path(sft_dataset_dir)
    tok = WikiTokenizer.load(tokenizer_dir)
    runtime = setup_runtime(device)
    model = load_model(base_dir).train()
    block = model.config.block_size
    if tok.vocab_size > model.config.vocab_size:
        raise DataError(f"tokenizer at {tokenizer_dir} has {tok.vocab_size} ids but the model "
                        f"at {base_dir} only {model.config.vocab_size}")
    chat = render_sft_file(sft_dataset_dir / "train.jsonl", tok)
    examples = with_replay(chat, train_cfg.replay_share, shards_dir, block, train_cfg.seed)
    train_blocks, pstats = pack_examples(examples, block, tok.end_id, tok.end_id)
    heldout_path = sft_dataset_dir / "heldout.jsonl"
    val_blocks, _ = pack_examples(render_sft_file(heldout_path, tok), block, tok.end_id, tok.end_id) \
        if heldout_path.exists() else (None, None)
    data = BlockBatches(train_blocks, train_cfg.batch_size, train_cfg.grad_accum, train_cfg.seed)
    max_steps = derive_max_steps(train_cfg, data.n)
    objective = LMObjective()
    val = BlockBatches(val_blocks, train_cfg.batch_size, 1, 0, shuffle=False) \
        if val_blocks is not None and len(val_blocks["idx"]) else None

    def evaluate(m):
        if val is None:
            return {}
        dev = runtime.device
        return objective.evaluate(m, ({k: v.to(dev) for k, v in b.items()} for b in val.eval_batches()))

    sample = _chat_sampler(sft_dataset_dir, tok, runtime.device)
    attention = attention_figures(train_blocks["doc_ids"], runtime.device)

    def summarize(state):
        return {"train_loss": state.last.get("loss/train"), "val_loss": state.last.get("loss/val"),
                "initial_loss": state.initial_loss,
                "loss_fraction": round(pstats.loss_fraction, 6), "end_share": round(pstats.end_share, 6),
                "examples": pstats.examples, "replay_examples": len(examples) - len(chat),
                "dropped_too_long": pstats.dropped_too_long,
                "blocks": pstats.blocks, "tokens_trained": state.tokens, **attention,
                "tokens_per_s": round(state.tokens / max(state.seconds, 1e-9), 1)}

    if runtime.is_main and on_metrics is not None:
        on_metrics({"sft/loss_fraction": pstats.loss_fraction, "sft/end_share": pstats.end_share,
                    "sft/examples": pstats.examples, "sft/dropped_too_long": pstats.dropped_too_long}, 0)
    cfg = model.config
    return run_training(
        "sft", model=model, objective=objective, data=data, train_cfg=train_cfg, runtime=runtime,
        max_steps=max_steps, inputs={"base": Path(base_dir), "sft_dataset": sft_dataset_dir,
                                     "tokenizer": Path(tokenizer_dir),
                                     **({"token_shards": Path(shards_dir)} if shards_dir else {})},
        out=out, work=work, on_metrics=on_metrics, summarize=summarize,
        tokenizer_dir=Path(tokenizer_dir), evaluate=evaluate,
        sample=sample, flops_per_token=flops_per_token(model.num_params(), cfg.n_layer, cfg.n_embd, block))


SKIP_SAMPLE_BLOCKS = 64
"""Packed blocks whose FlexAttention tiles are counted for the reported skipped share."""


def attention_figures(doc_ids, device) -> dict:
    """How packed blocks attend on `device`: FlexAttention and the share of its tiles skipped
    (causal and cross-document, over the first SKIP_SAMPLE_BLOCKS blocks), or the dense mask."""
    if not use_flex(device):
        return {"attention_kernel": "dense-mask"}
    mask = document_block_mask(doc_ids[:SKIP_SAMPLE_BLOCKS].to(device))
    return {"attention_kernel": "flex", "attention_blocks_skipped": round(blocks_skipped(mask), 4)}


def with_replay(chat: list[tuple[list[int], list[int]]], share: float, shards_dir: Path | None,
                block: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """The chat examples with pretraining windows mixed in so that they make up `share` of the
    whole; each window is as long as half a block, and every one of its tokens is trained."""
    if share <= 0:
        return chat
    if shards_dir is None:
        raise DataError("replay_share > 0 needs the pretraining token shards (the token_shards input)")
    import numpy as np

    from wikigpt_core.train.data import TokenShards

    shards = TokenShards(Path(shards_dir) / "train.bin", block // 2, 1, seed)
    n = round(len(chat) * share / (1 - share))
    rng = np.random.default_rng([seed, 7])
    starts = rng.integers(0, len(shards.tokens) - block // 2, size=n)
    windows = [shards.tokens[s:s + block // 2].astype(np.int64).tolist() for s in starts]
    after: dict[int, list[list[int]]] = {}  # chat index -> the windows that follow it
    for w, window in enumerate(windows):
        after.setdefault(w * len(chat) // n, []).append(window)
    out: list[tuple[list[int], list[int]]] = []
    for i, example in enumerate(chat):
        out.append(example)
        out.extend((window, list(window)) for window in after.get(i, []))
    return out


def _chat_sampler(dataset_dir: Path, tok, device):
    """Answer the first held-out (else train) prompt, greedily."""
    src = dataset_dir / "heldout.jsonl"
    rows = read_jsonl(src if src.exists() else dataset_dir / "train.jsonl")
    return chat_sampler(rows[0]["messages"], tok, device) if rows else None

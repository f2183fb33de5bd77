"""Asset checks. Blocking checks guard expensive downstream work: a failure stops the run
before any GPU asset below it starts. Each check reads the artifact on disk, not the stats the
stage claimed, so a corrupt or planted artifact trips it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from wikigpt_core.config import Settings, artifact_dir

# Near-duplicates in Wikipedia are rare: removing more than this share signals a broken dedup.
DEDUP_BAND = (0.0, 0.25)
# Share of SFT positions that carry loss (the reference mix has 35-45 %, docs/reference.md; our
# passages make prompts longer, so the band is wide but still catches a broken mask).
LOSS_FRACTION_BAND = (0.05, 0.95)
SFT_STOPPED_MIN = 0.95
SFT_PPL_WARN_RATIO = 1.15

CheckFn = Callable[[Settings, Path], tuple[bool, dict, str]]


def _check(asset: str, name: str, blocking: bool, description: str,
           severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR):
    def decorator(fn: CheckFn):
        def build(settings: Settings) -> dg.AssetChecksDefinition:
            @dg.asset_check(asset=asset, name=name, blocking=blocking, description=description)
            def _run() -> dg.AssetCheckResult:
                try:
                    passed, metadata, summary = fn(settings, artifact_dir(settings, asset))
                except Exception as e:  # an unreadable artifact fails the check, it does not crash it
                    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                               description=f"could not check {asset}: {e}")
                sev = severity
                if isinstance(metadata.get("_severity"), dg.AssetCheckSeverity):
                    sev = metadata.pop("_severity")
                return dg.AssetCheckResult(passed=passed, severity=sev,
                                           description=summary, metadata=metadata)
            return _run
        build.__name__ = name
        return build
    return decorator


@_check("deduped_corpus", "dedup_fraction_in_band", blocking=True,
        description=f"Dedup removed a share of cleaned articles within {DEDUP_BAND}.")
def dedup_fraction(settings: Settings, path: Path):
    rows_in = pq.ParquetFile(artifact_dir(settings, "cleaned_articles") / "articles.parquet").metadata.num_rows
    rows_out = pq.ParquetFile(path / "corpus.parquet").metadata.num_rows
    frac = 1 - rows_out / rows_in if rows_in else 1.0
    ok = rows_out > 0 and DEDUP_BAND[0] <= frac <= DEDUP_BAND[1]
    return ok, {"removed_fraction": frac, "rows_in": rows_in, "rows_out": rows_out}, \
        f"removed {frac:.1%} ({rows_in} → {rows_out})"


ROUND_TRIP_TEXT = "The Battle of Hastings (1066) — naïve café, 東京, emoji 🙂 and <|end|> as text."


@_check("tokenizer", "specials_and_round_trip", blocking=True,
        description="Each special is one reserved id; ordinary text (even '<|end|>') round-trips "
                    "and never yields a special id.")
def tokenizer_sane(settings: Settings, path: Path):
    from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer

    tok = WikiTokenizer.load(path)
    backend = tok.backend
    ids = [backend.token_to_id(s) for s in SPECIAL_TOKENS]
    singles = ids == list(range(len(SPECIAL_TOKENS)))
    encoded = tok.encode(ROUND_TRIP_TEXT)
    no_specials = not set(encoded) & set(ids)
    round_trip = tok.decode(encoded) == ROUND_TRIP_TEXT
    ok = singles and no_specials and round_trip and tok.vocab_size == settings.tokenizer.vocab_size
    return ok, {"special_ids": str(ids), "vocab_size": tok.vocab_size, "round_trip": round_trip,
                "text_makes_no_specials": no_specials}, \
        "specials are single ids and text round-trips" if ok else "tokenizer is broken"


@_check("token_shards", "ids_below_vocab", blocking=True,
        description="train.bin and val.bin are non-empty and every id < vocab size.")
def shards_valid(settings: Settings, path: Path):
    meta = json.loads((path / "meta.json").read_text())
    vocab = settings.model.vocab_size
    figures, ok = {"vocab_size": vocab}, True
    for split in ("train", "val"):
        arr = np.memmap(path / f"{split}.bin", dtype=np.uint16, mode="r")
        max_id = _chunked_max(arr)
        figures[f"{split}_tokens"] = int(arr.size)
        figures[f"{split}_max_id"] = max_id
        ok &= arr.size > 0 and max_id < vocab and meta.get("vocab_size", vocab) == vocab
    return ok, figures, "shards non-empty, ids in range" if ok else "empty shard or id ≥ vocab"


def _chunked_max(arr: np.ndarray, chunk: int = 1 << 24) -> int:
    if arr.size == 0:
        return -1
    return int(max(arr[i:i + chunk].max() for i in range(0, arr.size, chunk)))


@_check("token_shards", "untrained_loss_near_ln_vocab", blocking=True,
        description="Before pretraining: an untrained model of this profile scores ≈ ln(V) "
                    "(within 0.5) on val tokens — catches a vocab/shape mismatch early.")
def untrained_loss(settings: Settings, path: Path):
    import torch

    from wikigpt_core.model import GPT

    torch.manual_seed(0)
    cfg = settings.model
    # A smaller block keeps this cheap for the 124m profile; the loss does not depend on T.
    block = min(cfg.block_size, 256)
    model = GPT(cfg).eval()
    val = np.memmap(path / "val.bin", dtype=np.uint16, mode="r")
    n = min(4, max(1, (val.size - 1) // block))
    if val.size < block + 1:
        return False, {"val_tokens": int(val.size)}, f"val.bin too small for one {block}-token window"
    x = torch.from_numpy(np.stack([val[i * block:(i + 1) * block] for i in range(n)]).astype(np.int64))
    y = torch.from_numpy(np.stack([val[i * block + 1:(i + 1) * block + 1] for i in range(n)]).astype(np.int64))
    with torch.no_grad():
        _, loss = model(x, y)
    expected = math.log(cfg.vocab_size)
    ok = abs(loss.item() - expected) < 0.5
    return ok, {"untrained_loss": loss.item(), "ln_vocab": expected}, \
        f"untrained loss {loss.item():.3f} vs ln(V) {expected:.3f}"


@_check("sft_dataset", "loss_fraction_in_band", blocking=True,
        description=f"Share of SFT positions in the loss (the chat-format masking) within {LOSS_FRACTION_BAND}.")
def loss_fraction(settings: Settings, path: Path):
    from wikigpt_core.chat import IGNORE_INDEX, render_example
    from wikigpt_core.tokenizer import WikiTokenizer

    tok = WikiTokenizer.load(artifact_dir(settings, "tokenizer"))
    trained = total = ends = 0
    with (path / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if i >= 2_000:
                break
            ids, labels = render_example(json.loads(line)["messages"], tok)
            trained += sum(l != IGNORE_INDEX for l in labels)
            ends += sum(l == tok.end_id for l in labels)
            total += len(ids)
    frac = trained / total if total else 0.0
    ok = LOSS_FRACTION_BAND[0] <= frac <= LOSS_FRACTION_BAND[1]
    return ok, {"loss_fraction": frac, "end_share_of_trained": ends / max(trained, 1)}, \
        f"{frac:.1%} of positions in the loss"


def _report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


@_check("eval_report", "sft_no_catastrophic_forgetting", blocking=False,
        description="SFT val perplexity below the profile's limit (25 for 124m; see "
                    "docs/reference.md, Evaluation); "
                    "WARN when above base + 15 %.")
def sft_ppl(settings: Settings, path: Path):
    ppl = _report(path)["perplexity"]
    limit = settings.eval.sft_ppl_limit
    meta = {"ppl_base": ppl["base"], "ppl_sft": ppl["sft"], "limit": limit,
            "ratio_to_base": ppl["sft"] / ppl["base"]}
    if ppl["sft"] >= limit:
        return False, meta, f"SFT PPL {ppl['sft']:.2f} ≥ {limit}: catastrophic forgetting"
    if ppl["sft"] > SFT_PPL_WARN_RATIO * ppl["base"]:
        meta["_severity"] = dg.AssetCheckSeverity.WARN
        return False, meta, f"SFT PPL {ppl['sft']:.2f} is more than 15 % above base {ppl['base']:.2f}"
    return True, meta, f"SFT PPL {ppl['sft']:.2f} (base {ppl['base']:.2f})"


@_check("eval_report", "sft_stops", blocking=False,
        description=f"SFT emits <|end|> within the token budget on > {SFT_STOPPED_MIN:.0%} of prompts.")
def sft_stops(settings: Settings, path: Path):
    stopped = _report(path)["harness"]["sft"]["stopped"]
    return stopped > SFT_STOPPED_MIN, {"stopped": stopped}, f"SFT stopped on {stopped:.1%}"


@_check("eval_report", "lm_eval_ran", blocking=False, severity=dg.AssetCheckSeverity.WARN,
        description="The standard benchmarks (lm-evaluation-harness) ran where the profile asks for "
                    "them; WARN when their datasets or lm-eval itself were not there.")
def lm_eval_ran(settings: Settings, path: Path):
    from wikigpt_core.eval.lm_harness import read_lm_eval

    outcome = read_lm_eval(path)
    meta = {"status": outcome.status, "tasks": ", ".join(outcome.tasks)}
    if outcome.status == "off":
        return True, meta, "standard benchmarks are off for this profile"
    if outcome.status != "ok":
        meta["reason"] = outcome.reason
        return False, meta, f"standard benchmarks did not run: {outcome.reason}"
    return True, meta, f"{len(outcome.tasks)} tasks on {len(outcome.results)} checkpoints"


# Greedy replies to the gallery prompts, this many new tokens at most, for the collapse check.
DPO_GREEDY_TOKENS = 48
DPO_PPL_WINDOWS = 64


@_check("dpo_checkpoint", "dpo_stays_near_sft", blocking=False, severity=dg.AssetCheckSeverity.WARN,
        description="DPO's val perplexity stays within eval.dpo_ppl_max_ratio (1.3) of SFT's, and its "
                    "greedy answers to the gallery prompts are not all one string.")
def dpo_near_sft(settings: Settings, path: Path):
    from wikigpt_core.eval.gallery import load_gallery
    from wikigpt_core.eval.generation import generate_replies
    from wikigpt_core.eval.perplexity import perplexity
    from wikigpt_core.model_io import load_model
    from wikigpt_core.tokenizer import WikiTokenizer

    dpo, sft = load_model(path), load_model(artifact_dir(settings, "sft_checkpoint"))
    val = artifact_dir(settings, "token_shards") / "val.bin"
    windows = min(settings.eval.ppl_batches * settings.eval.ppl_batch_size, DPO_PPL_WINDOWS)
    ppl = {name: perplexity(m, val, n_windows=windows, batch_size=settings.eval.ppl_batch_size)
           for name, m in (("sft", sft), ("dpo", dpo))}
    ratio = ppl["dpo"] / ppl["sft"]
    convs = [[{"role": "user", "content": g["prompt"]}] for g in load_gallery()]
    replies = generate_replies(dpo, WikiTokenizer.load(path), convs, temperature=0.0, top_p=1.0, seed=0,
                               max_new_tokens=min(settings.eval.max_new_tokens, DPO_GREEDY_TOKENS))
    texts = [r.text for (r,) in replies]
    distinct = len(set(texts))
    limit = settings.eval.dpo_ppl_max_ratio
    meta = {"ppl_sft": ppl["sft"], "ppl_dpo": ppl["dpo"], "ratio": ratio, "limit": limit,
            "distinct_greedy_replies": distinct, "gallery_prompts": len(texts)}
    problems = []
    if ratio > limit:
        problems.append(f"DPO PPL {ppl['dpo']:.4g} is {ratio:.2f}x SFT's {ppl['sft']:.4g} (limit {limit}x)")
    if distinct <= 1:
        problems.append(f"greedy answers collapsed: all {len(texts)} gallery replies are {texts[0][:60]!r}")
    if problems:
        return False, meta, "; ".join(problems)
    return True, meta, (f"DPO PPL {ratio:.2f}x SFT's; {distinct} distinct greedy replies "
                        f"to {len(texts)} gallery prompts")


@_check("hf_release", "release_loads", blocking=True,
        description="The release folder loads back (Llama config + safetensors + tokenizer) and "
                    "generates a token.")
def release_loads(settings: Settings, path: Path):
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.generation import SamplingParams, generate_ids
    from wikigpt_core.release.hf_export import load_release_model
    from wikigpt_core.tokenizer import WikiTokenizer

    model = load_release_model(path)
    tok = WikiTokenizer.load(path)
    prompt = render_prompt([{"role": "user", "content": "What is anarchism?"}], tok)
    (reply,) = generate_ids(model, [prompt], [SamplingParams(max_new_tokens=8, temperature=0.0)], tok=tok)
    new_tokens = len(reply.tokens)
    ok = new_tokens >= 1 and tok.vocab_size == model.config.vocab_size
    return ok, {"generated_tokens": new_tokens, "sample": tok.decode(reply.tokens)}, \
        "release loads and generates" if ok else "release did not generate"


CHECK_BUILDERS = [dedup_fraction, tokenizer_sane, shards_valid, untrained_loss, loss_fraction,
                  sft_ppl, sft_stops, lm_eval_ran, dpo_near_sft, release_loads]


def build_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    return [build(settings) for build in CHECK_BUILDERS]

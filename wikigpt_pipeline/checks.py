"""Asset checks. Blocking checks guard expensive downstream work: a failure stops the run
before any GPU asset below it starts. Each check reads the artifact on disk, not the stats the
stage claimed, so a corrupt or planted artifact trips it.

A check reads the version it checks: the folder its asset's latest materialization recorded
(`path` metadata), never the `current` pointer, which a later run may already have moved. The
upstream versions a check compares against are the ones that materialization was built from
(Dagster's input provenance). Each check is declared once, with `@asset_check_on(asset, ...)`,
which files it under its asset in `CHECKS`; the definitions take the checks of every asset they
hold. A check sets its own severity on the result it returns.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from wikigpt_core.config import Settings, artifact_dir
from wikigpt_core.stages import STAGES, is_enabled
from wikigpt_pipeline.metadata import PATH_KEY

# Near-duplicates in Wikipedia are rare: removing more than this share signals a broken dedup.
DEDUP_BAND = (0.0, 0.25)
# Share of SFT positions that carry loss (the reference mix has 35-45 %, docs/reference.md; our
# passages make prompts longer, so the band is wide but still catches a broken mask).
LOSS_FRACTION_BAND = (0.05, 0.95)
SFT_STOPPED_MIN = 0.95
SFT_PPL_WARN_RATIO = 1.15
WARN = dg.AssetCheckSeverity.WARN
INPUT_POINTER_TAG = "dagster/input_event_pointer/"
"""Materialization tag prefix: the storage id of each upstream's materialization it was built from."""


class VersionNotFound(LookupError):
    """The materialization a check needs is not recorded; the message says what to materialize."""


@dataclass(frozen=True)
class CheckedVersion:
    """The materialization under check: its version folder, and its ancestors' versions."""

    asset: str
    instance: dg.DagsterInstance
    record: dg.EventLogRecord

    @property
    def path(self) -> Path:
        return _recorded_path(self.asset, self.record)

    def ancestor(self, asset: str) -> Path:
        """The folder of the `asset` version this one was built from, following the recorded
        inputs upstream (breadth first) until a materialization of `asset` is found."""
        todo, seen = deque([self.record]), set()
        while todo:
            record = todo.popleft()
            for tag, pointer in record.asset_materialization.tags.items():
                if not tag.startswith(INPUT_POINTER_TAG) or pointer == "NULL" or pointer in seen:
                    continue
                seen.add(pointer)
                upstream = tag.removeprefix(INPUT_POINTER_TAG)
                found = _record_at(self.instance, upstream, int(pointer))
                if upstream == asset:
                    return _recorded_path(asset, found)
                todo.append(found)
        raise VersionNotFound(f"the {self.asset} version at {self.path} records no {asset} upstream; "
                              f"materialize {asset} and then {self.asset}")

    @classmethod
    def latest(cls, instance: dg.DagsterInstance, asset: str) -> "CheckedVersion":
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
        if not records:
            raise VersionNotFound(f"{asset} has no materialization to check; materialize it first")
        return cls(asset, instance, records[0])


def _record_at(instance: dg.DagsterInstance, asset: str, storage_id: int) -> dg.EventLogRecord:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=[storage_id]), limit=1).records
    if not found:
        raise VersionNotFound(f"the {asset} materialization {storage_id} is gone from this Dagster "
                              f"instance; rematerialize {asset}")
    return found[0]


def _recorded_path(asset: str, record: dg.EventLogRecord) -> Path:
    entry = record.asset_materialization.metadata.get(PATH_KEY)
    if entry is None:
        raise VersionNotFound(f"the {asset} materialization {record.storage_id} records no "
                              f"`{PATH_KEY}`; rematerialize {asset}")
    return Path(entry.value)


CheckFn = Callable[[Settings, CheckedVersion], dg.AssetCheckResult]
CheckBuilder = Callable[[Settings], dg.AssetChecksDefinition]
CHECKS: dict[str, list[CheckBuilder]] = {}
"""Every check, under the asset it checks; filled by `asset_check_on`."""


def asset_check_on(asset: str, name: str, *, blocking: bool, description: str):
    """Declare `fn(settings, version) -> AssetCheckResult` as a check of `asset`. A check that
    cannot read its artifact fails (ERROR) with the reason instead of crashing the run."""
    def declare(fn: CheckFn) -> CheckFn:
        def build(settings: Settings) -> dg.AssetChecksDefinition:
            @dg.asset_check(asset=asset, name=name, blocking=blocking, description=description)
            def _run(context) -> dg.AssetCheckResult:  # AssetCheckExecutionContext
                try:
                    return fn(settings, CheckedVersion.latest(context.instance, asset))
                except Exception as e:  # noqa: BLE001 - an unreadable artifact fails the check
                    return dg.AssetCheckResult(passed=False, description=f"could not check {asset}: {e}")
            return _run

        CHECKS.setdefault(asset, []).append(build)
        return fn
    return declare


def build_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """The checks of every asset these settings define."""
    return [build(settings) for asset, builds in CHECKS.items()
            if is_enabled(STAGES[asset], settings) for build in builds]


@asset_check_on("deduped_corpus", "dedup_fraction_in_band", blocking=True,
                description=f"Dedup removed a share of cleaned articles within {DEDUP_BAND}.")
def dedup_fraction(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    rows_in = pq.ParquetFile(version.ancestor("cleaned_articles") / "articles.parquet").metadata.num_rows
    rows_out = pq.ParquetFile(version.path / "corpus.parquet").metadata.num_rows
    frac = 1 - rows_out / rows_in if rows_in else 1.0
    return dg.AssetCheckResult(
        passed=rows_out > 0 and DEDUP_BAND[0] <= frac <= DEDUP_BAND[1],
        metadata={"removed_fraction": frac, "rows_in": rows_in, "rows_out": rows_out},
        description=f"removed {frac:.1%} ({rows_in} → {rows_out})")


ROUND_TRIP_TEXT = "The Battle of Hastings (1066) — naïve café, 東京, emoji 🙂 and <|end|> as text."


@asset_check_on("tokenizer", "specials_and_round_trip", blocking=True,
                description="Each special is one reserved id; ordinary text (even '<|end|>') "
                            "round-trips and never yields a special id.")
def tokenizer_sane(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer

    tok = WikiTokenizer.load(version.path)
    ids = [tok.backend.token_to_id(s) for s in SPECIAL_TOKENS]
    singles = ids == list(range(len(SPECIAL_TOKENS)))
    encoded = tok.encode(ROUND_TRIP_TEXT)
    no_specials = not set(encoded) & set(ids)
    round_trip = tok.decode(encoded) == ROUND_TRIP_TEXT
    ok = singles and no_specials and round_trip and tok.vocab_size == settings.tokenizer.vocab_size
    return dg.AssetCheckResult(
        passed=ok,
        metadata={"special_ids": str(ids), "vocab_size": tok.vocab_size, "round_trip": round_trip,
                  "text_makes_no_specials": no_specials},
        description="specials are single ids and text round-trips" if ok else "tokenizer is broken")


@asset_check_on("token_shards", "ids_below_vocab", blocking=True,
                description="train.bin and val.bin are non-empty and every id < vocab size.")
def shards_valid(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    meta = json.loads((version.path / "meta.json").read_text())
    vocab = settings.model.vocab_size
    figures, ok = {"vocab_size": vocab}, True
    for split in ("train", "val"):
        arr = np.memmap(version.path / f"{split}.bin", dtype=np.uint16, mode="r")
        max_id = _chunked_max(arr)
        figures[f"{split}_tokens"] = int(arr.size)
        figures[f"{split}_max_id"] = max_id
        ok &= arr.size > 0 and max_id < vocab and meta.get("vocab_size", vocab) == vocab
    return dg.AssetCheckResult(
        passed=bool(ok), metadata=figures,
        description="shards non-empty, ids in range" if ok else "empty shard or id ≥ vocab")


def _chunked_max(arr: np.ndarray, chunk: int = 1 << 24) -> int:
    if arr.size == 0:
        return -1
    return int(max(arr[i:i + chunk].max() for i in range(0, arr.size, chunk)))


@asset_check_on("token_shards", "untrained_loss_near_ln_vocab", blocking=True,
                description="Before pretraining: an untrained model of this profile scores ≈ ln(V) "
                            "(within 0.5) on val tokens — catches a vocab/shape mismatch early.")
def untrained_loss(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    import torch

    from wikigpt_core.model import GPT

    torch.manual_seed(0)
    cfg = settings.model
    # A smaller block keeps this cheap for the 124m profile; the loss does not depend on T.
    block = min(cfg.block_size, 256)
    val = np.memmap(version.path / "val.bin", dtype=np.uint16, mode="r")
    if val.size < block + 1:
        return dg.AssetCheckResult(passed=False, metadata={"val_tokens": int(val.size)},
                                   description=f"val.bin too small for one {block}-token window")
    n = min(4, max(1, (val.size - 1) // block))
    x = torch.from_numpy(np.stack([val[i * block:(i + 1) * block] for i in range(n)]).astype(np.int64))
    y = torch.from_numpy(np.stack([val[i * block + 1:(i + 1) * block + 1] for i in range(n)]).astype(np.int64))
    with torch.no_grad():
        _, loss = GPT(cfg).eval()(x, y)
    expected = math.log(cfg.vocab_size)
    return dg.AssetCheckResult(
        passed=abs(loss.item() - expected) < 0.5,
        metadata={"untrained_loss": loss.item(), "ln_vocab": expected},
        description=f"untrained loss {loss.item():.3f} vs ln(V) {expected:.3f}")


@asset_check_on("sft_dataset", "loss_fraction_in_band", blocking=True,
                description="Share of SFT positions in the loss (the chat-format masking) within "
                            f"{LOSS_FRACTION_BAND}.")
def loss_fraction(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.chat import IGNORE_INDEX, render_example
    from wikigpt_core.tokenizer import WikiTokenizer

    # The tokenizer is no upstream of sft_dataset (SFT trains with the base checkpoint's own),
    # so the current tokenizer, the one the next base checkpoint carries, stands in.
    tok = WikiTokenizer.load(artifact_dir(settings, "tokenizer"))
    trained = total = ends = 0
    with (version.path / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if i >= 2_000:
                break
            ids, labels = render_example(json.loads(line)["messages"], tok)
            trained += sum(label != IGNORE_INDEX for label in labels)
            ends += sum(label == tok.end_id for label in labels)
            total += len(ids)
    frac = trained / total if total else 0.0
    return dg.AssetCheckResult(
        passed=LOSS_FRACTION_BAND[0] <= frac <= LOSS_FRACTION_BAND[1],
        metadata={"loss_fraction": frac, "end_share_of_trained": ends / max(trained, 1)},
        description=f"{frac:.1%} of positions in the loss")


def _report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


@asset_check_on("eval_report", "sft_no_catastrophic_forgetting", blocking=False,
                description="SFT val perplexity below the profile's limit (25 for 124m; see "
                            "docs/reference.md, Evaluation); WARN when above base + 15 %.")
def sft_ppl(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    ppl = _report(version.path)["perplexity"]
    limit = settings.eval.sft_ppl_limit
    meta = {"ppl_base": ppl["base"], "ppl_sft": ppl["sft"], "limit": limit,
            "ratio_to_base": ppl["sft"] / ppl["base"]}
    if ppl["sft"] >= limit:
        return dg.AssetCheckResult(passed=False, metadata=meta,
                                   description=f"SFT PPL {ppl['sft']:.2f} ≥ {limit}: catastrophic forgetting")
    if ppl["sft"] > SFT_PPL_WARN_RATIO * ppl["base"]:
        return dg.AssetCheckResult(
            passed=False, severity=WARN, metadata=meta,
            description=f"SFT PPL {ppl['sft']:.2f} is more than 15 % above base {ppl['base']:.2f}")
    return dg.AssetCheckResult(passed=True, metadata=meta,
                               description=f"SFT PPL {ppl['sft']:.2f} (base {ppl['base']:.2f})")


@asset_check_on("eval_report", "sft_stops", blocking=False,
                description=f"SFT emits <|end|> within the token budget on > {SFT_STOPPED_MIN:.0%} of prompts.")
def sft_stops(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    stopped = _report(version.path)["harness"]["sft"]["stopped"]
    return dg.AssetCheckResult(passed=stopped > SFT_STOPPED_MIN, metadata={"stopped": stopped},
                               description=f"SFT stopped on {stopped:.1%}")


@asset_check_on("eval_report", "lm_eval_ran", blocking=False,
                description="The standard benchmarks (lm-evaluation-harness) ran where the profile "
                            "asks for them; WARN when their datasets or lm-eval itself were not there.")
def lm_eval_ran(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.eval.lm_harness import read_lm_eval

    outcome = read_lm_eval(version.path)
    meta = {"status": outcome.status, "tasks": ", ".join(outcome.tasks)}
    if outcome.status == "off":
        return dg.AssetCheckResult(passed=True, metadata=meta,
                                   description="standard benchmarks are off for this profile")
    if outcome.status != "ok":
        return dg.AssetCheckResult(passed=False, severity=WARN, metadata=meta | {"reason": outcome.reason},
                                   description=f"standard benchmarks did not run: {outcome.reason}")
    return dg.AssetCheckResult(passed=True, metadata=meta,
                               description=f"{len(outcome.tasks)} tasks on {len(outcome.results)} checkpoints")


# Greedy replies to the gallery prompts, this many new tokens at most, for the collapse check.
DPO_GREEDY_TOKENS = 48
DPO_PPL_WINDOWS = 64


@asset_check_on("dpo_checkpoint", "dpo_stays_near_sft", blocking=False,
                description="DPO's val perplexity stays within eval.dpo_ppl_max_ratio (1.3) of SFT's, "
                            "and its greedy answers to the gallery prompts are not all one string; "
                            "WARN otherwise.")
def dpo_near_sft(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.eval.gallery import load_gallery
    from wikigpt_core.eval.generation import generate_replies
    from wikigpt_core.eval.perplexity import perplexity
    from wikigpt_core.model_io import load_model
    from wikigpt_core.tokenizer import WikiTokenizer

    dpo, sft = load_model(version.path), load_model(version.ancestor("sft_checkpoint"))
    val = version.ancestor("token_shards") / "val.bin"
    windows = min(settings.eval.ppl_batches * settings.eval.ppl_batch_size, DPO_PPL_WINDOWS)
    ppl = {name: perplexity(m, val, n_windows=windows, batch_size=settings.eval.ppl_batch_size)
           for name, m in (("sft", sft), ("dpo", dpo))}
    ratio = ppl["dpo"] / ppl["sft"]
    convs = [[{"role": "user", "content": g["prompt"]}] for g in load_gallery()]
    replies = generate_replies(dpo, WikiTokenizer.load(version.path), convs, temperature=0.0, top_p=1.0,
                               seed=0, max_new_tokens=min(settings.eval.max_new_tokens, DPO_GREEDY_TOKENS))
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
        return dg.AssetCheckResult(passed=False, severity=WARN, metadata=meta, description="; ".join(problems))
    return dg.AssetCheckResult(passed=True, metadata=meta,
                               description=f"DPO PPL {ratio:.2f}x SFT's; {distinct} distinct greedy "
                                           f"replies to {len(texts)} gallery prompts")


@asset_check_on("hf_release", "release_loads", blocking=True,
                description="The release folder loads back (Llama config + safetensors + tokenizer) "
                            "and generates a token.")
def release_loads(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.generation import SamplingParams, generate_ids
    from wikigpt_core.release.hf_export import load_release_model
    from wikigpt_core.tokenizer import WikiTokenizer

    model = load_release_model(version.path)
    tok = WikiTokenizer.load(version.path)
    prompt = render_prompt([{"role": "user", "content": "What is anarchism?"}], tok)
    (reply,) = generate_ids(model, [prompt], [SamplingParams(max_new_tokens=8, temperature=0.0)], tok=tok)
    new_tokens = len(reply.tokens)
    ok = new_tokens >= 1 and tok.vocab_size == model.config.vocab_size
    return dg.AssetCheckResult(
        passed=ok, metadata={"generated_tokens": new_tokens, "sample": tok.decode(reply.tokens)},
        description="release loads and generates" if ok else "release did not generate")


@asset_check_on("gguf_release", "gguf_files_answer_in_llama_cpp", blocking=True,
                description="Each GGUF file (f16, Q8_0, Q4_K_M) loads in llama.cpp and answers a chat "
                            "prompt through its embedded chat template.")
def gguf_files_answer(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.release.gguf_release import LABELS, answer_chat
    from wikigpt_core.release.llamacpp import LlamaCppFailed

    files = sorted(version.path.glob("*.gguf"))
    hf_config = json.loads((version.ancestor("hf_release") / "config.json").read_text())
    replies = {}
    for f in files:  # one file that does not load must not hide how the others did
        try:
            replies[f.name] = answer_chat(f, n_ctx=hf_config["max_position_embeddings"])
        except LlamaCppFailed as e:
            replies[f.name] = {"content": f"[does not load] {str(e)[-300:]}", "completion_tokens": 0}
    silent = [name for name, r in replies.items() if r["completion_tokens"] < 1 or not r["content"].strip()]
    meta = {name: r["content"][:300] for name, r in replies.items()}
    if len(files) != len(LABELS):
        return dg.AssetCheckResult(passed=False, metadata=meta, description=(
            f"{len(files)} GGUF files, expected {len(LABELS)} ({', '.join(LABELS)})"))
    return dg.AssetCheckResult(passed=not silent, metadata=meta, description=(
        f"no answer from {', '.join(silent)}" if silent else f"all {len(files)} files answer in llama.cpp"))


@asset_check_on("gguf_release", "gguf_perplexity_within_bounds", blocking=False,
                description="Measured by llama.cpp on the val shard: Q8_0's perplexity within "
                            "gguf.q8_0_ppl_max_ratio (1 %) of f16's, Q4_K_M's within "
                            "gguf.q4_k_m_ppl_max_ratio (5 %); WARN otherwise.")
def gguf_perplexity(settings: Settings, version: CheckedVersion) -> dg.AssetCheckResult:
    from wikigpt_core.release.gguf_release import BASELINE, MEASUREMENTS

    files = json.loads((version.path / "run" / MEASUREMENTS).read_text())["files"]
    base = files[BASELINE]["perplexity"]
    bounds = {"Q8_0": settings.gguf.q8_0_ppl_max_ratio, "Q4_K_M": settings.gguf.q4_k_m_ppl_max_ratio}
    ratios = {label: files[label]["perplexity"] / base for label in bounds}
    meta = {f"{label.lower()}_ppl_ratio": r for label, r in ratios.items()} | {"f16_ppl": base}
    over = [f"{label} {ratios[label]:.4f}x f16 (limit {limit}x)" for label, limit in bounds.items()
            if ratios[label] > limit]
    if over:
        return dg.AssetCheckResult(passed=False, severity=WARN, metadata=meta, description="; ".join(over))
    return dg.AssetCheckResult(passed=True, metadata=meta, description=", ".join(
        f"{label} {r:.4f}x f16" for label, r in ratios.items()))

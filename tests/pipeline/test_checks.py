"""Each asset check fires on a planted bad artifact (and passes on a good one where cheap).

Checks run as Dagster runs them: in a run after their asset's materialization, reading the
version folder that materialization recorded and the upstream versions it was built from."""
from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

from wikigpt_core.artifacts import point_current
from wikigpt_core.config import artifact_dir, asset_root, load_settings
from wikigpt_core.stages import STAGES
from wikigpt_core.tokenizer import SPECIAL_TOKENS
from wikigpt_pipeline.checks import CHECKS, build_checks


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    return load_settings("tiny")


def _planted_asset(asset: str, path, deps: list[str]) -> dg.AssetsDefinition:
    """Stands in for the stage: records `path` as the version it materialized, as stage_asset does."""
    @dg.asset(name=asset, deps=deps)
    def _planted() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path))})
    return _planted


def run_check(settings, name: str, **planted) -> dg.AssetCheckEvaluation:
    """Materialize each planted version (asset name -> folder), with the registry's lineage
    between them, then run the check `name` in the same run."""
    (check,) = [c for c in build_checks(settings) if next(iter(c.check_specs)).name == name]
    assets = [_planted_asset(asset, path, [d for d in STAGES[asset].inputs if d in planted])
              for asset, path in planted.items()]
    res = dg.materialize([*assets, check], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    (evaluation,) = [e for e in res.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def _dir(settings, asset, version: str = "v1"):
    path = asset_root(settings, asset) / version
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_every_check_is_filed_under_a_stage_and_named_once(settings):
    assert set(CHECKS) <= set(STAGES)
    names = [next(iter(c.check_specs)).name for c in build_checks(settings)]
    assert len(names) == len(set(names)) >= 10


def _parquet(path, n):
    pq.write_table(pa.table({"id": list(range(n)), "title": [f"t{i}" for i in range(n)],
                             "url": ["u"] * n, "text": ["x"] * n}), path)


def _tokenizer(vocab: int, specials=SPECIAL_TOKENS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The quick brown fox jumps over the lazy dog. Anarchism is a political philosophy."] * 50
    tok.train_from_iterator(text, trainer)
    return tok


def test_dedup_band(settings):
    cleaned = _dir(settings, "cleaned_articles")
    _parquet(cleaned / "articles.parquet", 100)
    good, bad = _dir(settings, "deduped_corpus", "good"), _dir(settings, "deduped_corpus", "bad")
    _parquet(good / "corpus.parquet", 97)
    _parquet(bad / "corpus.parquet", 20)  # 80 % "duplicates"
    assert run_check(settings, "dedup_fraction_in_band", cleaned_articles=cleaned, deduped_corpus=good).passed
    result = run_check(settings, "dedup_fraction_in_band", cleaned_articles=cleaned, deduped_corpus=bad)
    assert not result.passed and result.metadata["removed_fraction"].value == pytest.approx(0.8)


def test_a_check_reads_the_version_it_checks_not_current(settings):
    """`current` points at a good corpus built from other articles; the materialization under
    check recorded a bad corpus and the cleaned version it came from: those are what count."""
    other = _dir(settings, "cleaned_articles", "other")
    _parquet(other / "articles.parquet", 20)
    point_current(other)
    point_current(_dir(settings, "deduped_corpus", "good"))
    _parquet(artifact_dir(settings, "deduped_corpus") / "corpus.parquet", 20)
    cleaned = _dir(settings, "cleaned_articles")
    _parquet(cleaned / "articles.parquet", 100)
    bad = _dir(settings, "deduped_corpus", "bad")
    _parquet(bad / "corpus.parquet", 20)
    result = run_check(settings, "dedup_fraction_in_band", cleaned_articles=cleaned, deduped_corpus=bad)
    assert not result.passed and result.metadata["rows_in"].value == 100


def test_a_check_without_the_upstream_it_needs_says_what_to_materialize(settings):
    corpus = _dir(settings, "deduped_corpus")
    _parquet(corpus / "corpus.parquet", 20)
    result = run_check(settings, "dedup_fraction_in_band", deduped_corpus=corpus)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "records no cleaned_articles upstream; materialize cleaned_articles" in result.description


def test_tokenizer_specials(settings):
    # Specials in the wrong place (a normal token first) must fail.
    path = _dir(settings, "tokenizer")
    _tokenizer(300, specials=("hello",) + SPECIAL_TOKENS).save(str(path / "tokenizer.json"))
    result = run_check(settings, "specials_and_round_trip", tokenizer=path)
    assert not result.passed and "specials" in result.description


def test_shards_ids_below_vocab(settings):
    path = _dir(settings, "token_shards")
    (path / "meta.json").write_text(json.dumps({"vocab_size": settings.model.vocab_size}))
    np.arange(100, dtype=np.uint16).tofile(path / "train.bin")
    np.array([1, 2, settings.model.vocab_size + 5], dtype=np.uint16).tofile(path / "val.bin")
    result = run_check(settings, "ids_below_vocab", token_shards=path)
    assert not result.passed and result.metadata["val_max_id"].value == settings.model.vocab_size + 5
    np.array([], dtype=np.uint16).tofile(path / "val.bin")
    assert not run_check(settings, "ids_below_vocab", token_shards=path).passed


def test_untrained_loss(settings):
    path = _dir(settings, "token_shards")
    rng = np.random.default_rng(0)
    rng.integers(0, settings.model.vocab_size, 2_000, dtype=np.uint16).tofile(path / "val.bin")
    good = run_check(settings, "untrained_loss_near_ln_vocab", token_shards=path)
    assert good.passed, good.description
    np.array([1, 2, 3], dtype=np.uint16).tofile(path / "val.bin")  # too short to measure
    assert not run_check(settings, "untrained_loss_near_ln_vocab", token_shards=path).passed


def test_sft_loss_fraction(settings):
    tokenizer = _dir(settings, "tokenizer")
    _tokenizer(settings.tokenizer.vocab_size).save(str(tokenizer / "tokenizer.json"))
    point_current(tokenizer)
    # Huge prompts, one-word answers: almost nothing is in the loss.
    rows = [{"messages": [{"role": "user", "content": "the quick brown fox " * 200},
                          {"role": "assistant", "content": "dog"}]}] * 5
    path = _dir(settings, "sft_dataset")
    (path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = run_check(settings, "loss_fraction_in_band", sft_dataset=path)
    assert not result.passed and result.metadata["loss_fraction"].value < 0.05


def _report(settings, ppl, stopped):
    path = _dir(settings, "eval_report")
    (path / "report.json").write_text(json.dumps({
        "perplexity": ppl, "harness": {"sft": {"stopped": stopped}}}))
    return path


def test_sft_perplexity(settings):
    limit = settings.eval.sft_ppl_limit
    path = _report(settings, {"base": 14.0, "sft": limit + 1, "dpo": limit + 2}, 1.0)
    result = run_check(settings, "sft_no_catastrophic_forgetting", eval_report=path)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    path = _report(settings, {"base": 14.0, "sft": 16.5, "dpo": 17.0}, 1.0)  # > base + 15 %
    result = run_check(settings, "sft_no_catastrophic_forgetting", eval_report=path)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "_severity" not in result.metadata  # severity travels on the result, not in metadata
    path = _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 1.0)
    assert run_check(settings, "sft_no_catastrophic_forgetting", eval_report=path).passed


def test_sft_stops(settings):
    path = _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 0.5)
    assert not run_check(settings, "sft_stops", eval_report=path).passed
    path = _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 0.99)
    assert run_check(settings, "sft_stops", eval_report=path).passed


def test_release_loads(settings):
    path = _dir(settings, "hf_release")
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\x00" * 16)  # truncated weights
    result = run_check(settings, "release_loads", hf_release=path)
    assert not result.passed and "could not check hf_release" in result.description
    assert result.severity == dg.AssetCheckSeverity.ERROR


def test_lm_eval_ran_warns_when_the_benchmarks_could_not_run(settings):
    from wikigpt_core.eval.lm_harness import LM_EVAL_FILE, LmEvalOutcome

    path = _dir(settings, "eval_report")
    assert run_check(settings, "lm_eval_ran", eval_report=path).passed  # no outcome file: benchmarks off
    (path / LM_EVAL_FILE).write_text(json.dumps(LmEvalOutcome(
        "unavailable", tasks=["hellaswag"], reason="could not load the task datasets (no Hub)").to_json()))
    result = run_check(settings, "lm_eval_ran", eval_report=path)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "no Hub" in result.description
    (path / LM_EVAL_FILE).write_text(json.dumps(LmEvalOutcome(
        "ok", tasks=["hellaswag"], results={"base": {"hellaswag": {"acc": 0.25}}}).to_json()))
    assert run_check(settings, "lm_eval_ran", eval_report=path).passed


def _checkpoint(path, model, tokenizer_dir):
    import shutil

    from wikigpt_core.model_io import save_model

    save_model(model, path)
    shutil.copyfile(tokenizer_dir / "tokenizer.json", path / "tokenizer.json")
    return path


def _collapsed(model, end_id: int):
    """Every embedding shares one direction and the tied <|end|> row is a large multiple of it:
    the model answers every prompt with <|end|> at once (the same empty string)."""
    import torch

    with torch.no_grad():
        u = torch.ones(model.config.n_embd)
        model.tok_emb.weight.mul_(0.01).add_(u)
        model.tok_emb.weight[end_id] = 2.0 * u
    return model


def test_dpo_stays_near_sft(settings, tmp_path):
    import torch

    from tests.core.test_release_support import random_model, train_tokenizer

    tok = train_tokenizer(tmp_path / "tok")
    ids = tok.encode("Paris is the capital of France. The sky is blue because air scatters light. " * 40)
    shards = _dir(settings, "token_shards")
    np.array(ids, dtype=np.uint16).tofile(shards / "val.bin")
    sft = random_model(tok.vocab_size, seed=3, block_scale=4.0)
    # The SFT version DPO was built from, two steps down from it, through sft_checkpoint.
    lineage = {"token_shards": shards,
               "sft_checkpoint": _checkpoint(_dir(settings, "sft_checkpoint"), sft, tmp_path / "tok")}

    def check(name: str, model):
        dpo = _checkpoint(_dir(settings, "dpo_checkpoint", name), model, tmp_path / "tok")
        return run_check(settings, "dpo_stays_near_sft", **lineage, dpo_checkpoint=dpo)

    result = check("unchanged", sft)  # DPO that changed nothing
    assert result.passed, result.description
    assert result.metadata["ratio"].value == pytest.approx(1.0)
    assert result.metadata["distinct_greedy_replies"].value > 1

    result = check("collapsed", _collapsed(random_model(tok.vocab_size, seed=3, block_scale=4.0), tok.end_id))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["distinct_greedy_replies"].value == 1 and "collapsed" in result.description

    drifted = random_model(tok.vocab_size, seed=3, block_scale=4.0)
    with torch.no_grad():  # a DPO step too far: the LM head (tied embedding) scrambled
        drifted.tok_emb.weight.copy_(torch.randn_like(drifted.tok_emb.weight) * 3.0)
    result = check("drifted", drifted)
    assert not result.passed and result.metadata["ratio"].value > settings.eval.dpo_ppl_max_ratio
    assert "PPL" in result.description and result.severity == dg.AssetCheckSeverity.WARN

"""Each asset check fires on a planted bad artifact (and passes on a good one where cheap)."""
from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

from wikigpt_core.config import artifact_dir, load_settings
from wikigpt_core.tokenizer import SPECIAL_TOKENS
from wikigpt_pipeline.checks import build_checks


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    return load_settings("tiny")


def run_check(settings, name: str) -> dg.AssetCheckResult:
    checks = {c.check_specs.__iter__().__next__().name: c for c in build_checks(settings)}
    return checks[name]()


def _dir(settings, asset):
    path = artifact_dir(settings, asset)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    _parquet(_dir(settings, "cleaned_articles") / "articles.parquet", 100)
    _parquet(_dir(settings, "deduped_corpus") / "corpus.parquet", 97)
    assert run_check(settings, "dedup_fraction_in_band").passed
    _parquet(_dir(settings, "deduped_corpus") / "corpus.parquet", 20)  # 80 % "duplicates"
    result = run_check(settings, "dedup_fraction_in_band")
    assert not result.passed and result.metadata["removed_fraction"].value == pytest.approx(0.8)


def test_tokenizer_specials(settings):
    # Specials in the wrong place (a normal token first) must fail.
    bad = _tokenizer(300, specials=("hello",) + SPECIAL_TOKENS)
    bad.save(str(_dir(settings, "tokenizer") / "tokenizer.json"))
    result = run_check(settings, "specials_and_round_trip")
    assert not result.passed and "specials" in result.description


def test_shards_ids_below_vocab(settings):
    path = _dir(settings, "token_shards")
    (path / "meta.json").write_text(json.dumps({"vocab_size": settings.model.vocab_size}))
    np.arange(100, dtype=np.uint16).tofile(path / "train.bin")
    np.array([1, 2, settings.model.vocab_size + 5], dtype=np.uint16).tofile(path / "val.bin")
    result = run_check(settings, "ids_below_vocab")
    assert not result.passed and result.metadata["val_max_id"].value == settings.model.vocab_size + 5
    np.array([], dtype=np.uint16).tofile(path / "val.bin")
    assert not run_check(settings, "ids_below_vocab").passed


def test_untrained_loss(settings):
    path = _dir(settings, "token_shards")
    rng = np.random.default_rng(0)
    rng.integers(0, settings.model.vocab_size, 2_000, dtype=np.uint16).tofile(path / "val.bin")
    good = run_check(settings, "untrained_loss_near_ln_vocab")
    assert good.passed, good.description
    np.array([1, 2, 3], dtype=np.uint16).tofile(path / "val.bin")  # too short to measure
    assert not run_check(settings, "untrained_loss_near_ln_vocab").passed


def test_sft_loss_fraction(settings):
    _tokenizer(settings.tokenizer.vocab_size).save(str(_dir(settings, "tokenizer") / "tokenizer.json"))
    # Huge prompts, one-word answers: almost nothing is in the loss.
    rows = [{"messages": [{"role": "user", "content": "the quick brown fox " * 200},
                          {"role": "assistant", "content": "dog"}]}] * 5
    (_dir(settings, "sft_dataset") / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = run_check(settings, "loss_fraction_in_band")
    assert not result.passed and result.metadata["loss_fraction"].value < 0.05


def _report(settings, ppl, stopped):
    path = _dir(settings, "eval_report")
    (path / "report.json").write_text(json.dumps({
        "perplexity": ppl, "harness": {"sft": {"stopped": stopped}}}))


def test_sft_perplexity(settings):
    limit = settings.eval.sft_ppl_limit
    _report(settings, {"base": 14.0, "sft": limit + 1, "dpo": limit + 2}, 1.0)
    result = run_check(settings, "sft_no_catastrophic_forgetting")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    _report(settings, {"base": 14.0, "sft": 16.5, "dpo": 17.0}, 1.0)  # > base + 15 %
    result = run_check(settings, "sft_no_catastrophic_forgetting")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 1.0)
    assert run_check(settings, "sft_no_catastrophic_forgetting").passed


def test_sft_stops(settings):
    _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 0.5)
    assert not run_check(settings, "sft_stops").passed
    _report(settings, {"base": 14.0, "sft": 14.7, "dpo": 15.1}, 0.99)
    assert run_check(settings, "sft_stops").passed


def test_release_loads(settings):
    path = _dir(settings, "hf_release")
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\x00" * 16)  # truncated weights
    result = run_check(settings, "release_loads")
    assert not result.passed and "could not check hf_release" in result.description


def test_lm_eval_ran_warns_when_the_benchmarks_could_not_run(settings):
    from wikigpt_core.eval.lm_harness import LM_EVAL_FILE, LmEvalOutcome

    path = _dir(settings, "eval_report")
    assert run_check(settings, "lm_eval_ran").passed  # no outcome file: benchmarks off
    (path / LM_EVAL_FILE).write_text(json.dumps(LmEvalOutcome(
        "unavailable", tasks=["hellaswag"], reason="could not load the task datasets (no Hub)").to_json()))
    result = run_check(settings, "lm_eval_ran")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "no Hub" in result.description
    (path / LM_EVAL_FILE).write_text(json.dumps(LmEvalOutcome(
        "ok", tasks=["hellaswag"], results={"base": {"hellaswag": {"acc": 0.25}}}).to_json()))
    assert run_check(settings, "lm_eval_ran").passed


def _checkpoint(path, model, tokenizer_dir):
    import shutil

    from wikigpt_core.model_io import save_model

    save_model(model, path)
    shutil.copyfile(tokenizer_dir / "tokenizer.json", path / "tokenizer.json")


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
    np.array(ids, dtype=np.uint16).tofile(_dir(settings, "token_shards") / "val.bin")
    sft = random_model(tok.vocab_size, seed=3, block_scale=4.0)
    _checkpoint(_dir(settings, "sft_checkpoint"), sft, tmp_path / "tok")

    _checkpoint(_dir(settings, "dpo_checkpoint"), sft, tmp_path / "tok")  # DPO that changed nothing
    result = run_check(settings, "dpo_stays_near_sft")
    assert result.passed, result.description
    assert result.metadata["ratio"].value == pytest.approx(1.0)
    assert result.metadata["distinct_greedy_replies"].value > 1

    bad = _collapsed(random_model(tok.vocab_size, seed=3, block_scale=4.0), tok.end_id)
    _checkpoint(_dir(settings, "dpo_checkpoint"), bad, tmp_path / "tok")
    result = run_check(settings, "dpo_stays_near_sft")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["distinct_greedy_replies"].value == 1 and "collapsed" in result.description

    drifted = random_model(tok.vocab_size, seed=3, block_scale=4.0)
    with torch.no_grad():  # a DPO step too far: the LM head (tied embedding) scrambled
        drifted.tok_emb.weight.copy_(torch.randn_like(drifted.tok_emb.weight) * 3.0)
    _checkpoint(_dir(settings, "dpo_checkpoint"), drifted, tmp_path / "tok")
    result = run_check(settings, "dpo_stays_near_sft")
    assert not result.passed and result.metadata["ratio"].value > settings.eval.dpo_ppl_max_ratio
    assert "PPL" in result.description and result.severity == dg.AssetCheckSeverity.WARN

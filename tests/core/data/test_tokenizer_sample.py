"""The tokenizer's bounded training sample: deterministic, spread over the corpus, disjoint from
the held-out slice; the 124m/350m presets bound it; the stage refuses a sample over its memory cap."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikigpt_core.config import TOKENIZER_SAMPLE_CHARS, TokenizerConfig, check_field, load_settings
from wikigpt_core.data.parquet_io import articles_table
from wikigpt_core.data.splits import heldout_ids
from wikigpt_core.data.tokenizer_train import (
    TokenizerMemoryError,
    corpus_texts,
    estimate_memory_gb,
    max_chars_within,
    run_tokenizer,
    sample_fraction,
    training_chars,
)

N_DOCS, DOC_CHARS = 4_000, 100


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus folder of N_DOCS documents of DOC_CHARS characters; each text names its row."""
    d = tmp_path_factory.mktemp("corpus")
    rows = [(1000 + i, f"T{i}", "u", f"row {i:05d} ".ljust(DOC_CHARS, "x")) for i in range(N_DOCS)]
    pq.write_table(articles_table(rows), d / "corpus.parquet", row_group_size=500)
    (d / "manifest.json").write_text(json.dumps({"content_hash": "test"}))
    return d


def _rows(texts) -> list[int]:
    return [int(t[4:9]) for t in texts]


def test_sample_is_deterministic_spread_and_sized(corpus):
    path = corpus / "corpus.parquet"
    held = heldout_ids(path, 0.05)
    total = training_chars(path, held)
    assert total == (N_DOCS - held.size) * DOC_CHARS
    target = total // 4
    keep = sample_fraction(total, target)
    first = _rows(corpus_texts(path, 0.05, False, target, keep_fraction=keep))
    again = _rows(corpus_texts(path, 0.05, False, target, keep_fraction=keep))
    assert first == again, "the sample must not change between runs"
    chars = len(first) * DOC_CHARS
    assert 0.85 * target <= chars <= target + DOC_CHARS
    # spread over the whole file, not its first documents: every tenth of the corpus is drawn on
    tenths = np.bincount(np.array(first) * 10 // N_DOCS, minlength=10)
    assert tenths.min() >= 0.5 * len(first) / 10, tenths
    assert not set(first) & {int(i) - 1000 for i in held}, "held-out documents were sampled"


def test_no_bound_streams_every_training_document_in_order(corpus):
    """max_train_chars = 0 (the tiny profile) trains on exactly what it did before the bound."""
    path = corpus / "corpus.parquet"
    held = {int(i) - 1000 for i in heldout_ids(path, 0.1)}
    assert sample_fraction(10**9, 0) == 1.0
    assert _rows(corpus_texts(path, 0.1, False)) == [i for i in range(N_DOCS) if i not in held]
    assert sorted(_rows(corpus_texts(path, 0.1, True))) == sorted(held)


def test_presets_bound_the_sample_within_the_memory_cap():
    for profile in ("124m", "350m"):
        tok = load_settings(profile, env=False).tokenizer
        assert tok.max_train_chars == TOKENIZER_SAMPLE_CHARS
        assert 2e9 <= tok.max_train_chars <= 4e9
        assert estimate_memory_gb(tok.max_train_chars) < tok.max_memory_gb
    assert load_settings("tiny", env=False).tokenizer.max_train_chars == 0  # tiny trains on all
    with pytest.raises(ValueError, match="max_memory_gb"):
        check_field(TokenizerConfig, "max_memory_gb", -1.0, "tokenizer")


def test_refuses_to_start_over_the_memory_cap_and_says_what_to_set(corpus, tmp_path):
    cfg = dataclasses.replace(TokenizerConfig(vocab_size=300), max_memory_gb=0.5)
    assert estimate_memory_gb(N_DOCS * DOC_CHARS) > 0.5
    with pytest.raises(TokenizerMemoryError, match=r"tokenizer\.max_train_chars to at most") as e:
        run_tokenizer(cfg, corpus, tmp_path / "tok")
    assert "max_memory_gb = 0.5" in str(e.value)
    assert not (tmp_path / "tok").exists()
    fits = max_chars_within(2.0)
    assert estimate_memory_gb(fits) <= 2.0 < estimate_memory_gb(fits + 1_000)


def test_bounded_sample_trains_and_reports_its_size(corpus, tmp_path):
    cfg = TokenizerConfig(vocab_size=300, heldout_fraction=0.05, max_train_chars=100_000)
    st = run_tokenizer(cfg, corpus, tmp_path / "tok").stats
    assert st["corpus_chars"] == training_chars(corpus / "corpus.parquet", heldout_ids(corpus / "corpus.parquet", 0.05))
    assert 85_000 <= st["train_chars"] <= 100_000 + DOC_CHARS
    assert st["train_sample_fraction"] == round(100_000 / st["corpus_chars"], 6)
    assert st["bytes_per_token"] > 1

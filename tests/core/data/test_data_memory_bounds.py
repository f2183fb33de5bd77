"""Dedup's and the shards' memory is flat in the corpus apart from a fixed number of bytes per
document, and membership tests stay linear; synthetic dump copies survive dedup.

Memory is what tracemalloc sees (Python objects and numpy arrays, deterministic) at its peak,
on corpora of many short documents, where per-document costs dominate."""
from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikigpt_core.config import ShardsConfig, TokenizerConfig
from wikigpt_core.data.builddump import perturb_words
from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.minhash import jaccard, shingle_hashes
from wikigpt_core.data.parquet_io import articles_table
from wikigpt_core.data.shards import run_shards
from wikigpt_core.data.splits import in_sorted
from wikigpt_core.data.tokenizer_train import run_tokenizer

BYTES_PER_DOC = 200
"""The bound: at 6.8 M articles, 200 bytes per document is 1.4 GB."""
SMALL, LARGE = 2_000, 8_000


def _short_docs(d, n: int, name: str, seed: int = 0):
    """`n` distinct 30-word documents in a parquet file (ids 1..n), with a manifest."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{k}" for k in range(5_000)])
    texts = [" ".join(words[rng.integers(0, len(words), 30)]) for _ in range(n)]
    d.mkdir(parents=True)
    rows = [(i + 1, f"Doc {i}", "u", t) for i, t in enumerate(texts)]
    pq.write_table(articles_table(rows), d / name, row_group_size=1_000)
    (d / "manifest.json").write_text(json.dumps({"content_hash": f"docs-{n}"}))
    return d


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _per_doc(measure) -> float:
    small, large = measure(SMALL), measure(LARGE)
    return (large - small) / (LARGE - SMALL)


def test_dedup_memory_is_flat_apart_from_bytes_per_document(settings, tmp_path):
    cfg = dataclasses.replace(settings.dedup, workers=1, batch_docs=500)

    def measure(n: int) -> int:
        src = _short_docs(tmp_path / f"cleaned-{n}", n, "articles.parquet")
        return _peak_bytes(lambda: run_dedup(cfg, src, tmp_path / f"dedup-{n}"))

    per_doc = _per_doc(measure)
    print(f"dedup: {per_doc:.0f} bytes per document")
    assert per_doc <= BYTES_PER_DOC


def test_shards_memory_is_flat_apart_from_bytes_per_document(tmp_path):
    tok_src = _short_docs(tmp_path / "tok-corpus", 1_000, "corpus.parquet", seed=1)
    tok = run_tokenizer(TokenizerConfig(vocab_size=300), tok_src, tmp_path / "tok").path

    def measure(n: int) -> int:
        src = _short_docs(tmp_path / f"corpus-{n}", n, "corpus.parquet")
        return _peak_bytes(lambda: run_shards(ShardsConfig(batch_docs=500), src, tok,
                                              tmp_path / f"shards-{n}", tmp_path / f"work-{n}"))

    per_doc = _per_doc(measure)
    print(f"shards: {per_doc:.0f} bytes per document")
    assert per_doc <= BYTES_PER_DOC


@pytest.mark.parametrize("n_sorted", [0, 1, 7, 1_000])
def test_in_sorted_equals_isin(n_sorted):
    rng = np.random.default_rng(n_sorted)
    sorted_ids = np.unique(rng.integers(-50, 5_000, n_sorted)).astype(np.int64)
    values = rng.integers(-100, 5_100, 3_000).astype(np.int64)
    np.testing.assert_array_equal(in_sorted(values, sorted_ids), np.isin(values, sorted_ids))


def test_perturbed_copies_fall_below_the_lsh_threshold(settings):
    """A benchmark copy (30 % of plain words swapped) is no near-duplicate of its original."""
    from wikigpt_core.data.extract import extract_article, skip_reason
    from wikigpt_core.data.sources import sample_path
    from wikigpt_core.data.xmlpages import iter_pages

    rng = np.random.default_rng(0)
    texts = [extract_article(p).text for p in iter_pages(sample_path()) if skip_reason(p) is None]
    texts = [t for t in texts if len(t.split()) >= 300]
    assert len(texts) >= 50
    js = [jaccard(shingle_hashes(t, 5), shingle_hashes(perturb_words(t.encode(), rng, 0.3).decode(), 5))
          for t in texts]
    assert max(js) < settings.dedup.lsh_threshold, max(js)
    assert np.mean(js) > 0.1  # still the same article, lightly edited

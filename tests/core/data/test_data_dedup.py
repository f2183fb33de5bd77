"""Dedup: vectorized MinHash equals datasketch's; exact and near-duplicate removal; quality
on edited copies of real sample articles planted at known Jaccard similarity."""
from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash

from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.extract import article_url, extract_article, skip_reason
from wikigpt_core.data.minhash import shingle_hashes, signature, text_digest, word_hashes
from wikigpt_core.data.parquet_io import articles_table
from wikigpt_core.data.xmlpages import iter_pages
from wikigpt_core.data.sources import sample_path

_WORD = re.compile(r"[^\W_]+")


def true_jaccard(a: str, b: str, k: int = 5) -> float:
    """Reference: word k-gram sets in plain Python."""
    def grams(t: str) -> set[tuple[str, ...]]:
        w = _WORD.findall(t.casefold())
        return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


@pytest.fixture(scope="module")
def articles():
    out = []
    for p in iter_pages(sample_path()):
        if skip_reason(p) is None:
            a = extract_article(p)
            if 300 <= len(a.text.split()) <= 4_000:  # keeps the test fast
                out.append((a.id, a.title, a.text))
    return out


def test_vectorized_signature_equals_datasketch(articles):
    text = articles[0][2]
    sh = shingle_hashes(text, 5)
    ref = MinHash(num_perm=128, seed=1, hashfunc=int)
    ref.update_batch(sh.tolist())
    assert np.array_equal(signature(sh, 128, 1), ref.hashvalues)
    assert word_hashes("Hello, hello!  WORLD").tolist()[0] == word_hashes("hello world").tolist()[0]


def test_shingles_track_true_jaccard(articles):
    a, b = articles[1][2], articles[1][2][: len(articles[1][2]) // 2]
    sa, sb = shingle_hashes(a, 5), shingle_hashes(b, 5)
    est = np.intersect1d(sa, sb).size / np.union1d(sa, sb).size
    assert abs(est - true_jaccard(a, b)) < 0.02


def test_exact_digest_ignores_case_space_and_punctuation():
    assert text_digest("The cat, sat.\n\nOn  a mat!") == text_digest("the CAT sat on a mat")
    assert text_digest("the cat sat") != text_digest("the cat sat down")


def _edit_to(text: str, target: float, rng: random.Random) -> tuple[str, float]:
    """Copy of text with words replaced/deleted at random until Jaccard ~ target."""
    words = text.split()
    order = list(range(len(words)))
    rng.shuffle(order)

    def edited(n: int) -> str:
        w = words[:]
        for j, pos in enumerate(order[:n]):
            w[pos] = "" if j % 3 == 2 else f"zq{rng.randrange(10**9)}x"  # 2/3 replace, 1/3 delete
        return " ".join(x for x in w if x)

    lo, hi = 0, len(words)
    while hi - lo > 1:  # fewest edits that bring J down to the target
        mid = (lo + hi) // 2
        if true_jaccard(text, edited(mid)) > target:
            lo = mid
        else:
            hi = mid
    copy = edited(hi)
    return copy, true_jaccard(text, copy)


def _write_cleaned(dir_, rows):
    dir_.mkdir(parents=True, exist_ok=True)
    pq.write_table(articles_table(rows), dir_ / "articles.parquet", compression="zstd", row_group_size=20)


def test_dedup_quality_on_planted_pairs(settings, tmp_path, articles):
    rng = random.Random(0)
    targets = [0.97, 0.92, 0.87, 0.85, 0.7, 0.5, 0.4, 0.25]
    rows = [(i, t, article_url(t), x) for i, t, x in articles]
    planted = []  # (original id, copy id, true J)
    for k, (i, t, x) in enumerate(articles):
        copy, j = _edit_to(x, targets[k % len(targets)], rng)
        cid = 10_000_000 + i
        rows.append((cid, t + " (edited)", article_url(t + " (edited)"), copy))
        planted.append((i, cid, j))
    rng.shuffle(rows)  # survivors must not depend on row order
    _write_cleaned(tmp_path / "cleaned", rows)
    r = run_dedup(settings.dedup, tmp_path / "cleaned", tmp_path / "deduped")
    kept = set(pq.read_table(tmp_path / "deduped" / "corpus.parquet", columns=["id"]).column("id").to_pylist())
    high = [(o, c) for o, c, j in planted if j >= 0.85]
    low = [(o, c) for o, c, j in planted if j <= 0.5]
    assert len(high) >= 15 and len(low) >= 10
    recall = sum(1 for o, c in high if o in kept and c not in kept) / len(high)
    assert recall >= 0.95, f"recall {recall:.3f} at J >= 0.85"
    assert all(o in kept and c in kept for o, c in low), "a pair at J <= 0.5 was merged"
    assert all(i in kept for i, _, _ in articles), "an original (lowest id) must survive"
    st = r.stats
    print(f"planted pairs: {len(high)} at J>=0.85 (recall {recall:.3f}), {len(low)} at J<=0.5 (0 merged)")
    assert st["fuzzy_removed"] == sum(1 for _, c, _ in planted if c not in kept)
    assert st["rows"] == len(kept) and st["example_pairs"][0]["method"] == "minhash"


def test_exact_duplicates_keep_lowest_id_and_workers_do_not_change_result(settings, tmp_path, articles):
    rows = [(i, t, article_url(t), x) for i, t, x in articles[:30]]
    rows += [(900 + k, "Copy", article_url("Copy"), articles[k][2].upper()) for k in range(5)]
    rows += [(5, "Copy of Anarchism", article_url("Copy of Anarchism"), articles[0][2])]  # lower id than 12
    _write_cleaned(tmp_path / "cleaned", rows)
    results = []
    for w in (1, 2):
        cfg = dataclasses.replace(settings.dedup, workers=w, batch_docs=8)  # 5 hashing tasks
        results.append(run_dedup(cfg, tmp_path / "cleaned", tmp_path / f"deduped{w}"))
    assert results[0].content_hash == results[1].content_hash
    st = results[0].stats
    assert st["exact_removed"] == 6 and st["rows"] == 30
    kept = set(pq.read_table(tmp_path / "deduped1" / "corpus.parquet").column("id").to_pylist())
    assert 5 in kept and articles[0][0] not in kept


def test_band_buckets_match_datasketch_minhashlsh(settings, articles):
    """Our numpy banding finds exactly the candidate pairs datasketch's MinHashLSH finds with
    the same signatures and the same (bands, rows)."""
    from datasketch import MinHashLSH

    from wikigpt_core.data.dedup import _lsh_candidates, lsh_params
    from wikigpt_core.data.minhash import band_hashes

    rng = random.Random(1)
    docs = [(i, x) for i, _, x in articles[:12]]
    docs += [(10_000 + i, _edit_to(x, t, rng)[0]) for (i, x), t in zip(docs, [0.9, 0.8, 0.7, 0.6, 0.5, 0.3] * 2)]
    ids = np.array([i for i, _ in docs], dtype=np.int64)
    sigs = np.stack([signature(shingle_hashes(x, 5), 128, 1) for _, x in docs])
    b, r = lsh_params(settings.dedup)
    lsh = MinHashLSH(num_perm=128, params=(b, r))
    for i, sig in zip(ids.tolist(), sigs):
        lsh.insert(i, MinHash(num_perm=128, hashvalues=sig, scheme="affine32"))
    expected = set()
    for i, sig in zip(ids.tolist(), sigs):
        for j in lsh.query(MinHash(num_perm=128, hashvalues=sig, scheme="affine32")):
            if j != i:
                expected.add((min(i, j), max(i, j)))
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "bands.npy"
        np.save(f, band_hashes(sigs, b, r))
        got = _lsh_candidates(ids, np.ones(len(ids), dtype=bool), [f], b)
    assert got.dtype == np.int64 and got.shape[1] == 2
    assert set(map(tuple, got.tolist())) == expected and len(got) == len(expected) >= 3

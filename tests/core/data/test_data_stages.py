"""The five data stages end to end on the real enwiki sample with the tiny profile."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikigpt_core.artifacts import read_manifest
from wikigpt_core.config import load_settings
from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.dump import observe_dump, run_dump
from wikigpt_core.data.shards import run_shards
from wikigpt_core.data.tokenizer_train import run_tokenizer
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    s = load_settings("tiny")
    r = {}
    r["dump"] = run_dump(s.dump, root / "wiki_dump", root / "_work/wiki_dump")
    r["clean"] = run_clean(s.clean, root / "wiki_dump", root / "cleaned_articles", root / "_work/cleaned_articles")
    r["dedup"] = run_dedup(s.dedup, root / "cleaned_articles", root / "deduped_corpus")
    r["tok"] = run_tokenizer(s.tokenizer, root / "deduped_corpus", root / "tokenizer")
    r["shards"] = run_shards(s.shards, root / "deduped_corpus", root / "tokenizer", root / "token_shards",
                             root / "_work/token_shards")
    return s, root, r


def test_dump_stats_and_fingerprint(pipeline):
    s, root, r = pipeline
    st = r["dump"].stats
    assert st["source"] == "sample" and st["pages"] == 206 and st["bytes"] == 1_695_871
    assert len(st["sha1"]) == 40 and st["dump_date"].startswith("20")
    assert read_manifest(root / "wiki_dump")["content_hash"] == r["dump"].content_hash
    assert observe_dump(s.dump) == f"sample:{st['sha1']}"


def test_clean_articles_contract(pipeline):
    _, root, r = pipeline
    path = root / "cleaned_articles" / "articles.parquet"
    pf = pq.ParquetFile(path)
    assert [f.name for f in pf.schema_arrow] == ["id", "title", "url", "text"]
    assert str(pf.schema_arrow.field("id").type) == "int64"
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    t = pf.read()
    st = r["clean"].stats
    assert st["pages_seen"] == 206 and st["rows"] == t.num_rows > 50
    fc = st["filter_counts"]
    # The sample has 99 redirects, 1 non-article page and 8 disambiguation pages.
    assert fc["redirect"] == 99 and fc["namespace"] == 1 and fc["disambiguation"] == 8
    assert st["rows"] + sum(fc.values()) == st["pages_seen"]
    titles = set(t.column("title").to_pylist())
    assert "Anarchism" in titles and "AccessibleComputing" not in titles
    row = t.slice(0, 1).to_pylist()[0]
    assert row["url"] == "https://en.wikipedia.org/wiki/" + row["title"].replace(" ", "_")
    assert "[[" not in "".join(t.column("text").to_pylist())
    assert all(len(x) >= 500 for x in t.column("text").to_pylist())


def test_dedup_contract(pipeline):
    _, root, r = pipeline
    st = r["dedup"].stats
    t = pq.read_table(root / "deduped_corpus" / "corpus.parquet")
    assert st["rows"] == t.num_rows == st["rows_in"] - st["exact_removed"] - st["fuzzy_removed"]
    assert t.schema.names == ["id", "title", "url", "text"]


def test_tokenizer_contract(pipeline):
    s, root, r = pipeline
    tok = WikiTokenizer.load(root / "tokenizer")
    assert tok.vocab_size == s.tokenizer.vocab_size
    assert [tok.backend.token_to_id(x) for x in SPECIAL_TOKENS] == [0, 1, 2, 3]
    text = "Anarchism is a political philosophy. <|end|>"
    ids = tok.encode(text)
    assert not set(ids) & {0, 1, 2, 3} and tok.decode(ids) == text
    assert 2.5 < r["tok"].stats["bytes_per_token"] < 6


def test_shards_contract(pipeline):
    s, root, r = pipeline
    d = root / "token_shards"
    meta = json.loads((d / "meta.json").read_text())
    train = np.memmap(d / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(d / "val.bin", dtype=np.uint16, mode="r")
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == s.tokenizer.vocab_size
    assert meta["train_tokens"] == train.size and meta["val_tokens"] == val.size > 0
    assert train[-1] == val[-1] == meta["separator_id"] == 0
    st = r["shards"].stats
    assert (train == 0).sum() + (val == 0).sum() == st["documents"] == r["dedup"].stats["rows"]
    # The val documents decode back to corpus articles, and none is also in train.
    tok = WikiTokenizer.load(root / "tokenizer")
    first_val = tok.decode(val[: int(np.argmax(val == 0))].tolist())
    corpus = pq.read_table(root / "deduped_corpus" / "corpus.parquet").column("text").to_pylist()
    assert first_val in corpus
    assert tok.decode(train.tolist()).count(first_val[:200]) == 0


def test_data_stages_are_on_the_stage_cli():
    out = subprocess.run([sys.executable, "-m", "wikigpt_core.run", "--list"],
                         capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for stage, inputs in [("wiki_dump", "-"), ("cleaned_articles", "wiki_dump"),
                          ("deduped_corpus", "cleaned_articles"), ("tokenizer", "deduped_corpus"),
                          ("token_shards", "deduped_corpus,tokenizer")]:
        assert f"inputs={inputs} " in listed[stage] and "in-process" in listed[stage], listed[stage]


def test_local_multistream_source_brings_its_index(tmp_path, sample_split):
    from conftest import make_multistream

    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "src", header, pages, per_stream=30)
    s = load_settings("tiny")
    cfg = type(s.dump)(source=str(xml))
    r = run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "work")
    assert r.stats["multistream"] and r.stats["pages"] == 206 and r.stats["dump_date"] == "20990101"
    assert sorted(p.name for p in r.path.iterdir()) == sorted([xml.name, index.name, "manifest.json"])
    assert (r.path / xml.name).read_bytes() == xml.read_bytes()
    assert observe_dump(cfg).startswith(str(xml.resolve()))


def test_unknown_source_is_a_clear_error(tmp_path):
    s = load_settings("tiny")
    with pytest.raises(FileNotFoundError, match="neither `sample`"):
        run_dump(type(s.dump)(source="/nonexistent/dump.xml.bz2"), tmp_path / "d", tmp_path / "w")
    assert not (tmp_path / "d").exists()


def test_row_groups_are_bounded_by_rows_and_bytes(tmp_path):
    from wikigpt_core.data.parquet_io import RowGroupWriter, articles_table

    rows = [(i, f"T{i}", f"u{i}", "x" * 1_000) for i in range(50)]
    with RowGroupWriter(tmp_path / "a.parquet", row_group_size=20) as w:
        for k in range(0, 50, 7):
            w.write(articles_table(rows[k:k + 7]))
    sizes = [pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(i).num_rows for i in range(3)]
    assert sizes == [20, 20, 10] and w.rows == 50
    with RowGroupWriter(tmp_path / "b.parquet", row_group_size=1_000, max_bytes=10_000) as w:
        w.write(articles_table(rows))
        for k in range(0, 50, 5):
            w.write(articles_table(rows[k:k + 5]))
    md = pq.ParquetFile(tmp_path / "b.parquet").metadata
    assert md.num_rows == 100 and md.num_row_groups >= 5

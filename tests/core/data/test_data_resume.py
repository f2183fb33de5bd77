"""Parallel multistream extraction matches sequential extraction, and a killed extraction or
tokenization resumes from its finished parts with identical output."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_multistream

from wikigpt_core.artifacts import content_hash
from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.dump import run_dump
from wikigpt_core.data.shards import run_shards
from wikigpt_core.data.tokenizer_train import run_tokenizer

REPO = Path(__file__).resolve().parents[3]


def _rows(path: Path) -> dict[int, tuple[str, str, str]]:
    t = pq.read_table(path)
    return {r["id"]: (r["title"], r["url"], r["text"]) for r in t.to_pylist()}


def test_parallel_multistream_equals_sequential(settings, tmp_path, sample_split):
    header, pages = sample_split
    xml, _ = make_multistream(tmp_path / "ms", header, pages, per_stream=20)
    cfg = dataclasses.replace(settings.clean, workers=2, part_pages=40)
    ms = run_clean(cfg, xml.parent, tmp_path / "clean_ms", tmp_path / "work_ms")
    seq_dump = run_dump(settings.dump, tmp_path / "dump", tmp_path / "work_dump")
    seq = run_clean(dataclasses.replace(cfg, workers=1), seq_dump.path, tmp_path / "clean_seq", tmp_path / "work_seq")
    assert ms.stats["mode"] == "multistream" and seq.stats["mode"] == "sequential"
    assert ms.stats["parts"] == 6 and ms.stats["filter_counts"] == seq.stats["filter_counts"]
    assert _rows(ms.path / "articles.parquet") == _rows(seq.path / "articles.parquet")
    # Bounded row groups.
    pf = pq.ParquetFile(ms.path / "articles.parquet")
    assert pf.num_row_groups >= 1 and max(pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)) <= cfg.row_group_size


def _kill_when(proc: subprocess.Popen, work: Path, n: int, timeout: float = 120.0) -> int:
    """SIGKILL proc as soon as n finished-part markers exist; return how many there were."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(work.glob("parts-*/part-*.json"))
        if len(found) >= n:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return len(list(work.glob("parts-*/part-*.json")))
        if proc.poll() is not None:
            pytest.fail(f"the stage finished before it could be killed:\n{proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no finished parts appeared")


def _cli(stage: str, toml: Path, inputs: dict[str, Path], out: Path, work: Path) -> subprocess.Popen:
    """The stage CLI as a launcher runs it: write the spec, then run the stage from it."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    spec = out.parent / f"{stage}.spec.json"
    subprocess.run([sys.executable, "-m", "wikigpt_core.run", stage, "--write-spec", str(spec),
                    "--profile", "tiny", "--config", str(toml), "--out", str(out), "--work", str(work),
                    *[a for name, d in inputs.items() for a in ("--input", f"{name}={d}")]],
                   env=env, check=True, capture_output=True, text=True)
    return subprocess.Popen([sys.executable, "-m", "wikigpt_core.run", stage, "--spec", str(spec)],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def test_killed_extraction_resumes_from_finished_parts(settings, tmp_path):
    dump = run_dump(settings.dump, tmp_path / "dump", tmp_path / "work_dump")
    toml = tmp_path / "o.toml"
    toml.write_text("[clean]\npart_pages = 8\nworkers = 1\n")
    work = tmp_path / "work_clean"
    proc = _cli("cleaned_articles", toml, {"wiki_dump": dump.path}, tmp_path / "clean", work)
    killed_with = _kill_when(proc, work, 3)
    assert not (tmp_path / "clean").exists(), "a killed run publishes nothing"
    cfg = dataclasses.replace(settings.clean, part_pages=8, workers=1)
    resumed = run_clean(cfg, dump.path, tmp_path / "clean", work)
    assert resumed.stats["parts_reused"] >= min(killed_with, 3)
    assert resumed.stats["parts"] == 26  # 206 pages / 8
    fresh = run_clean(cfg, dump.path, tmp_path / "clean_fresh", tmp_path / "work_fresh")
    assert fresh.stats["parts_reused"] == 0
    assert resumed.content_hash == fresh.content_hash
    assert not list(work.glob("parts-*")), "parts are cleared once the artifact is published"


def test_killed_tokenization_resumes_from_finished_parts(settings, tmp_path):
    dump = run_dump(settings.dump, tmp_path / "dump", tmp_path / "w0")
    clean = run_clean(settings.clean, dump.path, tmp_path / "clean", tmp_path / "w1")
    corpus = run_dedup(settings.dedup, clean.path, tmp_path / "corpus")
    tok = run_tokenizer(settings.tokenizer, corpus.path, tmp_path / "tok")
    toml = tmp_path / "o.toml"
    toml.write_text("[shards]\nbatch_docs = 2\n")
    work = tmp_path / "work_shards"
    proc = _cli("token_shards", toml, {"deduped_corpus": corpus.path, "tokenizer": tok.path},
                tmp_path / "shards", work)
    _kill_when(proc, work, 2)
    assert not (tmp_path / "shards").exists()
    cfg = dataclasses.replace(settings.shards, batch_docs=2)
    resumed = run_shards(cfg, corpus.path, tok.path, tmp_path / "shards", work)
    assert resumed.stats["parts_reused"] >= 2
    fresh = run_shards(cfg, corpus.path, tok.path, tmp_path / "shards_fresh", tmp_path / "w_fresh")
    assert resumed.content_hash == fresh.content_hash
    # Part size does not change the bytes: the split depends on document ids only.
    other = run_shards(settings.shards, corpus.path, tok.path, tmp_path / "shards_big", tmp_path / "w_big")
    assert content_hash(other.path) == content_hash(fresh.path)

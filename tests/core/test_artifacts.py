from __future__ import annotations

import json

import pytest

from wikigpt_core.artifacts import ArtifactWriter, MANIFEST, content_hash, read_manifest


def test_publishes_atomically_with_manifest(tmp_path):
    out = tmp_path / "asset"
    with ArtifactWriter(out, stage="demo", config={"a": 1}) as w:
        (w.dir / "data.txt").write_text("hello")
        w.stats["rows"] = 1
        assert not out.exists()  # nothing visible until the stage succeeds
    manifest = read_manifest(out)
    assert manifest["stats"] == {"rows": 1} and manifest["config"] == {"a": 1}
    assert manifest["content_hash"] == content_hash(out) == w.result.content_hash
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no temp dirs left


def test_failed_stage_keeps_previous_artifact(tmp_path):
    out = tmp_path / "asset"
    with ArtifactWriter(out, stage="demo") as w:
        (w.dir / "data.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out, stage="demo") as w:
            (w.dir / "data.txt").write_text("half-writ")
            raise RuntimeError("boom")
    assert (out / "data.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]


def test_content_hash_ignores_manifest_but_not_names_or_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.bin").write_bytes(b"123")
    (a / MANIFEST).write_text(json.dumps({"created_unix": 1}))
    assert content_hash(a) == content_hash(b)
    (b / "x.bin").write_bytes(b"124")
    assert content_hash(a) != content_hash(b)
    (b / "x.bin").rename(b / "y.bin")
    (b / "y.bin").write_bytes(b"123")
    assert content_hash(a) != content_hash(b)


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Materialize the upstream asset"):
        read_manifest(tmp_path)

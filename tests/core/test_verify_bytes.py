"""Bytes are verified, not trusted because a manifest exists: each file's size and digests are
recorded; a damaged version is named, moved aside and recomputed; a consumer refuses a damaged
input; a published version is never replaced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wikigpt_core.artifacts import (MANIFEST, ArtifactWriter, NotReproduced, file_sha256,
                                    point_current, read_manifest)
from wikigpt_core.integrity import (CorruptArtifact, FULL_HASH_MAX_ENV, VerifyPolicy,
                                    verify_artifact)

MIB = 1 << 20


def _publish(out: Path, files: dict[str, bytes]) -> Path:
    with ArtifactWriter(out, stage="demo") as w:
        for name, data in files.items():
            (w.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (w.dir / name).write_bytes(data)
        (w.run_dir / "log.txt").write_text("run record, not hashed")
    return out


def _flip(path: Path, offset: int) -> None:
    """Damage one byte; the size stays the same."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    _replace(path, bytes(data))


def _truncate(path: Path) -> None:
    _replace(path, path.read_bytes()[: path.stat().st_size // 2])


def _replace(path: Path, data: bytes) -> None:
    # A new file, never the old inode: wiki_dump hard-links the embedded sample into its version,
    # and damaging that inode would damage the installed sample itself.
    tmp = path.with_name(path.name + ".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_manifest_records_each_files_size_and_digests(tmp_path):
    out = _publish(tmp_path / "v1", {"a.bin": b"123456", "sub/b.txt": b"hello"})
    files = read_manifest(out)["files"]
    assert sorted(files) == ["a.bin", "sub/b.txt"]  # the run record is not hashed, so not recorded
    assert files["a.bin"]["size"] == 6
    assert files["sub/b.txt"]["sha256"] == file_sha256(out / "sub" / "b.txt")
    assert verify_artifact(out, "demo")["content_hash"] == read_manifest(out)["content_hash"]


def test_a_truncated_and_a_flipped_file_are_both_named(tmp_path):
    out = _publish(tmp_path / "9d4e0000aaaabbbb", {"model.safetensors": b"w" * 3456, "config.json": b"{}" * 8})
    _truncate(out / "model.safetensors")
    _flip(out / "config.json", 3)
    with pytest.raises(CorruptArtifact) as err:
        verify_artifact(out, "base_checkpoint")
    message = str(err.value)
    assert message.startswith("`base_checkpoint` version 9d4e0000aaaabbbb")
    assert "model.safetensors size 1728 != 3456 recorded" in message
    assert "config.json bytes differ from the recorded sha256" in message


def test_a_missing_or_extra_file_fails(tmp_path):
    out = _publish(tmp_path / "v1", {"a.bin": b"1", "b.bin": b"2"})
    (out / "b.bin").rename(out / "c.bin")
    with pytest.raises(CorruptArtifact, match="b.bin is missing; c.bin is not in the manifest"):
        verify_artifact(out, "demo")


def test_big_data_files_are_sampled_and_weights_hashed_in_full(tmp_path):
    """Past the full-hash limit a data file is checked by size and sampled blocks: damage at its
    ends is caught, damage between the sampled blocks is the price of not reading it all.
    Weights are always hashed in full."""
    size = 8 * MIB
    out = _publish(tmp_path / "v1", {"shard.bin": b"\0" * size, "model.safetensors": b"\0" * size})
    sampled = VerifyPolicy(full_hash_max_bytes=MIB)
    unsampled_byte = 2 * MIB + 100 * 1024  # between the head and the second sampled block

    _flip(out / "shard.bin", unsampled_byte)
    verify_artifact(out, "demo", sampled)  # missed by sampling...
    with pytest.raises(CorruptArtifact, match="shard.bin bytes differ from the recorded sha256"):
        verify_artifact(out, "demo", VerifyPolicy(full_hash_max_bytes=size))  # ...not by a full hash
    _flip(out / "shard.bin", unsampled_byte)  # repaired

    _flip(out / "shard.bin", size - 10)
    with pytest.raises(CorruptArtifact, match="shard.bin bytes differ from the recorded sampled digest"):
        verify_artifact(out, "demo", sampled)
    _flip(out / "shard.bin", size - 10)

    _flip(out / "model.safetensors", unsampled_byte)
    with pytest.raises(CorruptArtifact, match="model.safetensors bytes differ from the recorded sha256"):
        verify_artifact(out, "demo", sampled)


def test_the_full_hash_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(FULL_HASH_MAX_ENV, "2")
    assert VerifyPolicy.from_env().full_hash_max_bytes == 2 * MIB
    monkeypatch.setenv(FULL_HASH_MAX_ENV, "lots")
    with pytest.raises(ValueError, match=f"{FULL_HASH_MAX_ENV}='lots' is not a number of MiB"):
        VerifyPolicy.from_env()


def test_a_manifest_without_file_records_is_checked_by_its_content_hash(tmp_path):
    out = _publish(tmp_path / "v1", {"a.bin": b"123"})
    manifest = read_manifest(out)
    del manifest["files"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    verify_artifact(out, "demo")
    _flip(out / "a.bin", 0)
    with pytest.raises(CorruptArtifact, match="not the recorded content hash"):
        verify_artifact(out, "demo")


def test_a_published_version_is_never_replaced(tmp_path):
    out = _publish(tmp_path / "v1", {"a.bin": b"same"})
    created = read_manifest(out)["created_unix"]
    again = _publish(out, {"a.bin": b"same"})  # a recompute that reproduces the bytes
    assert read_manifest(again)["created_unix"] == created  # the published copy was kept
    with pytest.raises(NotReproduced, match="The published version is kept"):
        _publish(out, {"a.bin": b"different"})
    assert (out / "a.bin").read_bytes() == b"same"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no temp dirs left


# --- through the stage CLI, on the embedded sample ---

def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wikigpt_core.run", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _materialize(stage: str, tmp_path: Path, env: dict, *extra: str) -> tuple[Path, Path]:
    """Write the stage's spec and run it; point `current` at the version, as the asset does."""
    spec = tmp_path / f"{stage}.json"
    written = _cli(stage, "--write-spec", str(spec), *extra, env=env)
    assert written.returncode == 0, written.stderr
    ran = _cli(stage, "--spec", str(spec), env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out = Path(json.loads(spec.read_text())["out"])
    point_current(out)
    return spec, out


@pytest.fixture()
def home_env(tmp_path) -> dict:
    return {**os.environ, "WIKIGPT_HOME": str(tmp_path / "home")}


def test_a_damaged_version_is_named_moved_aside_and_recomputed(tmp_path, home_env):
    _materialize("wiki_dump", tmp_path, home_env)
    spec, out = _materialize("cleaned_articles", tmp_path, home_env)
    good = read_manifest(out)["content_hash"]
    _truncate(out / "articles.parquet")
    _flip(out / "language.txt", 0)

    healed = _cli("cleaned_articles", "--spec", str(spec), env=home_env)
    assert healed.returncode == 0, healed.stderr[-2000:]
    assert f"`cleaned_articles` version {out.name}" in healed.stdout
    assert "articles.parquet size" in healed.stdout and "language.txt bytes differ" in healed.stdout
    assert "cache hit" not in healed.stdout  # recomputed, not reused
    assert verify_artifact(out, "cleaned_articles")["content_hash"] == good
    (aside,) = [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.corrupt-")]
    assert (aside / "language.txt").exists()  # kept for a post-mortem until `wikigpt gc`

    again = _cli("cleaned_articles", "--spec", str(spec), env=home_env)
    assert again.returncode == 0 and "cache hit" in again.stdout


def test_a_consumer_refuses_a_damaged_input_naming_it(tmp_path, home_env):
    _, dump = _materialize("wiki_dump", tmp_path, home_env)
    (data,) = [p for p in dump.iterdir() if p.suffix == ".bz2"]
    _flip(data, data.stat().st_size // 2)
    spec = tmp_path / "clean.json"
    assert _cli("cleaned_articles", "--write-spec", str(spec), env=home_env).returncode == 0

    refused = _cli("cleaned_articles", "--spec", str(spec), env=home_env)
    assert refused.returncode == 2
    assert f"input `wiki_dump` version {dump.name}" in refused.stderr
    assert "Rematerialize wiki_dump" in refused.stderr
    assert not Path(json.loads(spec.read_text())["out"]).exists()

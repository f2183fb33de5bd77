"""`wikigpt gc` covers `_work` scratch: the scratch (and lock) of a version that no
materialization refers to goes, unless a running run holds that version's lock; corrupt versions
moved aside go too; gc prints each path it frees with its size."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from wikigpt_core.version_lock import lock_path, version_lock


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A home with one materialized tokenizer version, and scratch of several versions."""
    from wikigpt_pipeline.instance import get_instance

    home = tmp_path / "home"
    monkeypatch.setenv("WIKIGPT_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    kept = home / "tiny" / "tokenizer" / "keep0000"
    _file(kept / "tokenizer.json", 10)
    instance = get_instance()
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "tokenizer", metadata={"path": dg.MetadataValue.path(str(kept))}))
    instance.dispose()
    work = home / "tiny" / "_work"
    _file(work / "tokenizer" / "keep0000" / "part-0", 5)  # scratch of a referenced version
    _file(work / "base_checkpoint" / "gone0000" / "ckpt-00000002" / "model.safetensors", 4000)
    _file(lock_path(work / "base_checkpoint" / "gone0000"), 0)
    _file(work / "base_checkpoint" / "busy0000" / "ckpt-00000004" / "model.safetensors", 3000)
    _file(lock_path(work / "sft_checkpoint" / "lockonly"), 0)
    _file(home / "tiny" / "tokenizer" / "keep0000.corrupt-20260101T000000-abcdef" / "tokenizer.json", 7)
    return home


def _gc(*flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "wikigpt_pipeline.cli", "gc", *flags], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_gc_frees_unused_scratch_and_keeps_what_a_run_or_a_materialization_uses(home):
    work = home / "tiny" / "_work"
    gone, busy = work / "base_checkpoint" / "gone0000", work / "base_checkpoint" / "busy0000"
    with version_lock(busy):  # a run is training this version right now
        dry = _gc("--dry-run")
        assert f"would remove {gone} (0.0 MB" in dry.stdout and gone.exists()
        done = _gc()
        assert f"removed {gone} (0.0 MB; scratch of a version" in done.stdout  # path and size
        assert not gone.exists() and not lock_path(gone).exists()
        assert not lock_path(work / "sft_checkpoint" / "lockonly").exists()
        assert not (home / "tiny" / "tokenizer" / "keep0000.corrupt-20260101T000000-abcdef").exists()
        assert "a corrupt version moved aside" in done.stdout
        assert busy.exists() and str(busy) not in done.stdout  # in use: kept
        assert (work / "tokenizer" / "keep0000" / "part-0").exists()  # its version is referenced
        assert (home / "tiny" / "tokenizer" / "keep0000" / "tokenizer.json").exists()

    after = _gc()  # the run has ended without publishing: its scratch is abandoned now
    assert f"removed {busy}" in after.stdout and not busy.exists()


def test_gc_reports_scratch_sizes_in_bytes(home):
    from wikigpt_pipeline.gc import find_garbage
    from wikigpt_pipeline.instance import get_instance

    instance = get_instance()
    try:
        sizes = {g.path.name: g.bytes for g in find_garbage(instance, home)}
    finally:
        instance.dispose()
    assert sizes["gone0000"] == 4000 and sizes["busy0000"] == 3000
    assert sizes["lockonly.lock"] == 0
    assert "keep0000" not in sizes

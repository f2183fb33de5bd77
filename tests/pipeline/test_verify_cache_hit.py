"""An asset's cache hit verifies the bytes it records: a damaged version is named in the run log,
recomputed (not reused), and `current` moves to the healed version; the DataVersion is the same
as before the damage, so nothing downstream goes stale."""
from __future__ import annotations

import os

import dagster as dg

from wikigpt_core.integrity import verify_artifact

ASSETS = [dg.AssetKey("wiki_dump"), dg.AssetKey("cleaned_articles")]


def _materialize(instance, defs) -> dict[str, dg.AssetMaterialization]:
    from wikigpt_pipeline.jobs import PIPELINE_JOB

    result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(instance=instance, asset_selection=ASSETS)
    assert result.success
    return {e.asset_key.path[-1]: e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()}


def _damage(version) -> None:
    """Truncate one file, flip a byte of another (new files: never the old inodes)."""
    parquet, language = version / "articles.parquet", version / "language.txt"
    data = parquet.read_bytes()
    (version / "p.tmp").write_bytes(data[: len(data) // 2])
    os.replace(version / "p.tmp", parquet)
    text = bytearray(language.read_bytes())
    text[0] ^= 0xFF
    (version / "l.tmp").write_bytes(bytes(text))
    os.replace(version / "l.tmp", language)


def test_a_damaged_version_is_not_a_cache_hit_and_heals(tmp_path, monkeypatch):
    from wikigpt_core.config import load_settings
    from wikigpt_pipeline.project import build_definitions

    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(load_settings("tiny"))
    first = _materialize(instance, defs)["cleaned_articles"]
    version = tmp_path / "home" / "tiny" / "cleaned_articles" / first.metadata["version"].value
    _damage(version)

    second = _materialize(instance, defs)
    assert second["wiki_dump"].metadata["cache_hit"].value is True  # intact: reused
    healed = second["cleaned_articles"]
    assert healed.metadata["cache_hit"].value is False  # damaged: recomputed
    assert healed.tags["dagster/data_version"] == first.tags["dagster/data_version"]
    assert (version.parent / "current").resolve() == version
    verify_artifact(version, "cleaned_articles")
    (run,) = instance.get_runs(limit=1)
    warnings = [e.message for e in instance.all_logs(run.run_id) if "fails its manifest" in e.message]
    assert len(warnings) == 1 and "articles.parquet size" in warnings[0]
    assert "language.txt bytes differ" in warnings[0]

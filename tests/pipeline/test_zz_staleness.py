"""Stale-only reruns and version-keyed outputs, end to end, against the session's materialized
graph. One story in order, because each step builds on the instance state of the last.

Named test_zz_* so it runs after the read-only end-to-end tests: it changes config and data.
"""
from __future__ import annotations

import bz2
import os
import subprocess
import sys

import dagster as dg
import pytest

from pathlib import Path

from wikigpt_core.config import apply_overrides, load_settings
from wikigpt_core.stages import asset_names
from wikigpt_pipeline import staleness
from wikigpt_pipeline.project import build_definitions

ASSET_NAMES = asset_names(load_settings("tiny", env=False))
"""The default graph's assets (what `wikigpt run` materialized)."""

pytestmark = pytest.mark.slow


def _wikigpt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wikigpt_pipeline.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def _refresh_executions(instance, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Run `wikigpt refresh`; the assets its runs executed, and those it recorded as cache
    hits, each in the order materialized."""
    before = {r.run_id for r in instance.get_runs()}
    run = _wikigpt("refresh", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    executed, hits = [], []
    for r in sorted((r for r in instance.get_runs() if r.run_id not in before),
                    key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp):
        for event in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            mat = event.asset_materialization
            (hits if mat.metadata["cache_hit"].value else executed).append(mat.asset_key.to_user_string())
    return executed, hits


def _not_fresh(instance, defs) -> list[str]:
    return [s.key for s in staleness.stale_status(instance, defs) if s.status != "FRESH"]


def _redirect_edited(dump_bytes: bytes) -> bytes:
    """The same dump with one redirect page's wikitext changed (the cleaning drops redirects)."""
    xml = bz2.decompress(dump_bytes).decode()
    page_end = xml.index("</page>", xml.index("<redirect title="))
    text_end = xml.rindex("</text>", 0, page_end)
    return bz2.compress((xml[:text_end] + " [[Category:Edited redirect]]" + xml[text_end:]).encode())


def test_stale_only_rerun_story(materialized, tmp_path):
    instance, settings = materialized.instance, materialized.settings
    # 1. Everything materialized: nothing is stale.
    assert _not_fresh(instance, materialized.defs) == []

    original = _versions(instance)
    original_files = _version_dirs(materialized)

    # 2. Change a cleaning threshold.
    new_min = 800
    assert new_min != settings.clean.min_chars
    override = tmp_path / "override.toml"
    override.write_text(f"[clean]\nmin_chars = {new_min}\n")
    changed_settings = apply_overrides(settings, {"clean": {"min_chars": new_min}})
    changed = build_definitions(changed_settings)
    env = os.environ | {"WIKIGPT_CONFIG": str(override)}

    # 3. Dagster's own stale status marks cleaned_articles, for its code version, and nothing
    #    outside its downstream (Dagster marks the next layer once this one re-ran).
    statuses = {s.key: s for s in staleness.stale_status(instance, changed)}
    assert [k for k, s in statuses.items() if s.status != "FRESH"] == ["cleaned_articles"]
    assert statuses["cleaned_articles"].causes[0].startswith("code")
    dry = _wikigpt("refresh", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0].startswith("cleaned_articles\tSTALE\tcode")

    # 4. `wikigpt refresh` runs cleaned_articles and its downstream in one pass: each asset
    #    once, on its final inputs. Fewer rows means new data, so the next layer executes too.
    downstream = [k.to_user_string() for k in staleness.with_downstream(
        [dg.AssetKey("cleaned_articles")], changed.resolve_asset_graph())]
    executed, hits = _refresh_executions(instance, env)
    assert "wiki_dump" not in executed + hits
    assert executed[0] == "cleaned_articles" and "deduped_corpus" in executed
    assert sorted(executed + hits) == sorted(downstream)  # each once, nothing outside
    assert _not_fresh(instance, changed) == []

    # 5. A dump edit the cleaning filters away (a redirect page): wiki_dump and
    #    cleaned_articles execute, cleaned_articles writes identical bytes, and everything below
    #    resolves to the versions it already has: cache hits, no stage code.
    sample = next(materialized.artifact("wiki_dump").glob("*.bz2"))
    dump = tmp_path / "enwiki-edited-pages-articles.xml.bz2"
    dump.write_bytes(_redirect_edited(sample.read_bytes()))
    env["WIKIGPT_DUMP"] = str(dump)
    executed, hits = _refresh_executions(instance, env)
    assert executed == ["wiki_dump", "cleaned_articles"]
    assert sorted(hits) == sorted(set(ASSET_NAMES) - {"wiki_dump", "cleaned_articles"})

    # 6. Revert both the threshold and the dump, then `wikigpt refresh`: every version the
    #    original run made is still on disk, so the refresh executes no stage at all. Each asset
    #    records a cache hit whose DataVersion is the original run's, and the bytes it points
    #    at are the original bytes.
    env = {k: v for k, v in env.items() if k not in ("WIKIGPT_CONFIG", "WIKIGPT_DUMP")}
    executed, hits = _refresh_executions(instance, env)
    assert executed == []  # zero stage executions
    assert "cleaned_articles" in hits
    assert _versions(instance) == original
    assert _not_fresh(instance, materialized.defs) == []
    assert set(original_files) <= set(_version_dirs(materialized))  # nothing removed...
    for path, created in original_files.items():
        assert _created(path) == created  # ...and no manifest written again
    # Two configs side by side: both cleaned_articles versions exist.
    cleaned = [p for p in (materialized.home / "tiny" / "cleaned_articles").iterdir()
               if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    assert len(cleaned) >= 2

    # 7. gc keeps every version a materialization refers to, and removes one nothing refers to.
    stray = materialized.home / "tiny" / "tokenizer" / "0123456789abcdef"
    stray.mkdir()
    (stray / "tokenizer.json").write_text("{}")
    dry = _wikigpt("gc", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert str(stray) in dry.stdout and stray.exists()
    gone = _wikigpt("gc", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "freed" in gone.stdout and not stray.exists()
    assert set(original_files) <= set(_version_dirs(materialized))


def _versions(instance) -> dict[str, str]:
    """Each asset's latest DataVersion in the instance."""
    out = {}
    for name in ASSET_NAMES:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        out[name] = event.asset_materialization.tags["dagster/data_version"]
    return out


def _version_dirs(materialized) -> dict[str, float]:
    """Every complete version directory under the profile, with its manifest's creation time."""
    root = materialized.home / "tiny"
    return {str(m.parent): _created(m.parent) for name in ASSET_NAMES
            for m in (root / name).glob("*/manifest.json") if not m.parent.is_symlink()}


def _created(path) -> float:
    import json

    return json.loads((Path(path) / "manifest.json").read_text())["created_unix"]

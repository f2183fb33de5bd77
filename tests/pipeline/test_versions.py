"""The stage contract against the session's materialized graph: a stage runs from its spec and
never from the environment, a complete version is a cache hit, and a DataVersion covers what
consumers read, not how long it took. (Runs before test_zz_staleness, which changes config.)"""
from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg
import pytest

from wikigpt_core.artifacts import read_manifest
from wikigpt_core.stages import resolve_spec
from wikigpt_pipeline import staleness
from wikigpt_pipeline.factory import RECOMPUTE_TAG
from wikigpt_pipeline.jobs import PIPELINE_JOB

pytestmark = pytest.mark.slow


def _materialize(materialized, asset: str, tags: dict[str, str] | None = None) -> dg.AssetMaterialization:
    job = materialized.defs.resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(instance=materialized.instance, asset_selection=[dg.AssetKey(asset)],
                                    tags=tags or {})
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events()]
    return event.event_specific_data.materialization


def _latest(materialized, asset: str) -> dg.AssetMaterialization:
    return materialized.instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization


def _not_fresh(materialized) -> list[str]:
    return [s.key for s in staleness.stale_status(materialized.instance, materialized.defs)
            if s.status != "FRESH"]


def test_a_complete_version_is_a_cache_hit(materialized):
    before = _latest(materialized, "tokenizer")
    created = read_manifest(materialized.artifact("tokenizer"))["created_unix"]
    mat = _materialize(materialized, "tokenizer")
    assert mat.metadata["cache_hit"].value is True
    assert mat.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert mat.metadata["path"].value == before.metadata["path"].value
    assert read_manifest(materialized.artifact("tokenizer"))["created_unix"] == created  # not rewritten
    assert _not_fresh(materialized) == []


def test_launched_stage_runs_with_the_hashed_config_not_the_environment(materialized, tmp_path, monkeypatch):
    """WIKIGPT_CONFIG changes after the definitions loaded: the stage still runs with the config
    its code_version was hashed from. Rerunning it on identical inputs reproduces its weights, so
    its DataVersion is unchanged and nothing downstream goes stale."""
    settings = materialized.settings
    before = _latest(materialized, "base_checkpoint")
    other = tmp_path / "other.toml"
    other.write_text("[pretrain]\nmax_steps = 2\nlr = 0.5\n[model]\nn_layer = 1\n")
    monkeypatch.setenv("WIKIGPT_CONFIG", str(other))

    mat = _materialize(materialized, "base_checkpoint", tags={RECOMPUTE_TAG: "true"})
    assert mat.metadata["cache_hit"].value is False
    manifest = read_manifest(mat.metadata["path"].value)
    assert manifest["config"]["train"]["max_steps"] == settings.pretrain.max_steps
    assert manifest["config"]["model"]["n_layer"] == settings.model.n_layer
    assert mat.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert _not_fresh(materialized) == []


def test_eval_rerun_on_unchanged_checkpoints_keeps_its_data_version(materialized):
    before = _latest(materialized, "eval_report")
    mat = _materialize(materialized, "eval_report", tags={RECOMPUTE_TAG: "true"})
    assert mat.metadata["cache_hit"].value is False
    assert mat.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert _not_fresh(materialized) == []  # hf_release stays fresh


def _run_cli(stage: str, spec) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wikigpt_core.run", stage, "--spec", str(spec)],
                          capture_output=True, text=True, timeout=300)


def test_a_spec_whose_config_was_edited_is_refused(materialized, tmp_path):
    spec = resolve_spec(materialized.settings, "tokenizer", out=tmp_path / "out", work=tmp_path / "work")
    data = spec.to_json()
    data["config"]["tokenizer"]["min_frequency"] += 1  # no longer what code_version was hashed from
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    out = _run_cli("tokenizer", path)
    assert out.returncode == 2
    assert "config was edited after the spec was resolved" in out.stderr
    assert not (tmp_path / "out").exists()


def test_a_spec_whose_input_changed_is_refused(materialized, tmp_path):
    spec = resolve_spec(materialized.settings, "tokenizer", out=tmp_path / "out", work=tmp_path / "work")
    data = spec.to_json()
    data["inputs"]["deduped_corpus"]["content_hash"] = "0" * 64
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    out = _run_cli("tokenizer", path)
    assert out.returncode == 2 and "re-resolve the spec" in out.stderr
    out = _run_cli("deduped_corpus", path)
    assert out.returncode == 2 and "is a spec for 'tokenizer'" in out.stderr

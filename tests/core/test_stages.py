"""The stage registry and the spec: one declaration per stage, versions derived from it."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from wikigpt_core.artifacts import ArtifactWriter, point_current
from wikigpt_core.config import apply_overrides, load_settings, section_type
from wikigpt_core.spec import SpecError, StageSpec
from wikigpt_core.stages import ASSET_NAMES, STAGES, ancestors, asset_names, resolve_spec, stage_code_version


def test_registry_is_a_dag_in_pipeline_order_over_known_sections():
    seen: set[str] = set()
    for name in ASSET_NAMES:
        stage = STAGES[name]
        assert set(stage.inputs) <= seen, f"{name} reads a stage declared after it"
        for section in stage.sections:
            section_type(section)  # raises on an unknown section
        assert stage.description, f"{name} has no description"
        assert bool(stage.task) == stage.launched
        seen.add(name)
    assert len(ASSET_NAMES) == 13
    assert ancestors("tokenizer") == ("wiki_dump", "cleaned_articles", "deduped_corpus")


def test_a_switched_off_stage_is_not_among_the_assets():
    settings = load_settings("tiny", env=False)
    assert asset_names(settings) == tuple(n for n in ASSET_NAMES if n != "gguf_release")
    assert asset_names(apply_overrides(settings, {"release": {"gguf": True}})) == ASSET_NAMES


def test_code_version_follows_exactly_the_declared_sections():
    settings = load_settings("tiny", env=False)
    clean, dedup = STAGES["cleaned_articles"], STAGES["deduped_corpus"]
    changed = apply_overrides(settings, {"clean": {"min_chars": 800}})
    assert stage_code_version(clean, changed, "") != stage_code_version(clean, settings, "")
    assert stage_code_version(dedup, changed, "") == stage_code_version(dedup, settings, "")
    back = apply_overrides(changed, {"clean": {"min_chars": settings.clean.min_chars}})
    assert stage_code_version(clean, back, "") == stage_code_version(clean, settings, "")


def _artifact(root, name: str, text: str, version: str = "v"):
    with ArtifactWriter(root / name / version, stage=name) as w:
        (w.dir / "data.txt").write_text(text)
        (w.run_dir / "log.txt").write_text(f"took {len(text)} s")  # run record: not hashed
    point_current(w.out)
    return w.result


def test_spec_round_trips_and_versions_follow_input_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    settings = load_settings("tiny", env=False)
    _artifact(tmp_path / "tiny", "deduped_corpus", "corpus v1")
    spec = resolve_spec(settings, "tokenizer")
    assert set(spec.config) == {"tokenizer"}  # exactly the declared sections
    assert spec.out.parent == tmp_path / "tiny" / "tokenizer" and spec.out.name == spec.version
    again = StageSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.version == spec.version and again.section("tokenizer") == settings.tokenizer
    again.verify(STAGES["tokenizer"].version, STAGES["tokenizer"].sections)
    with pytest.raises(SpecError, match="does not hold"):
        again.section("clean")
    with pytest.raises(SpecError, match="no input"):
        again.input("wiki_dump")

    _artifact(tmp_path / "tiny", "deduped_corpus", "corpus v2", "v2")  # new bytes upstream
    assert resolve_spec(settings, "tokenizer").version != spec.version
    spec.verify(STAGES["tokenizer"].version, STAGES["tokenizer"].sections)  # its input is untouched
    stale = spec.to_json()
    stale["inputs"]["deduped_corpus"]["content_hash"] = "0" * 64  # not what the input holds
    with pytest.raises(SpecError, match="re-resolve"):
        StageSpec.from_json(stale).verify(STAGES["tokenizer"].version, STAGES["tokenizer"].sections)


def test_run_record_stays_out_of_the_content_hash(tmp_path):
    a = _artifact(tmp_path / "a", "x", "same bytes")
    with ArtifactWriter(tmp_path / "b" / "x" / "v", stage="x") as w:
        (w.dir / "data.txt").write_text("same bytes")
        (w.run_dir / "log.txt").write_text("a different, slower run")
    assert w.result.content_hash == a.content_hash


def test_missing_upstream_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    with pytest.raises(SpecError, match="materialize deduped_corpus first"):
        resolve_spec(load_settings("tiny", env=False), "tokenizer")


def test_stage_cli_lists_the_registry():
    out = subprocess.run([sys.executable, "-m", "wikigpt_core.run", "--list"], check=True,
                         capture_output=True, text=True).stdout
    assert [line.split()[0] for line in out.splitlines()] == list(ASSET_NAMES)
    assert "launched (pretrain)" in out


def test_settings_are_not_read_from_the_environment_when_told_not_to(monkeypatch, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[clean]\nmin_chars = 5\n")
    monkeypatch.setenv("WIKIGPT_CONFIG", str(conf))
    monkeypatch.setenv("WIKIGPT_PROFILE", "124m")
    assert load_settings().clean.min_chars == 5
    s = load_settings(env=False)
    assert s.profile == "tiny" and s.clean.min_chars == dataclasses.replace(s.clean).min_chars != 5

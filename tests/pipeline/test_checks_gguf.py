"""The gguf_release checks, run as Dagster runs them, on a GGUF release made with real llama.cpp:
the blocking one passes on the files as made and fails on a file llama.cpp cannot load; the
non-blocking one warns when a quantized file's perplexity leaves its bound."""
from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from tests.core import test_release_gguf_release as made
from tests.pipeline.test_checks import run_check
from wikigpt_core.config import apply_overrides, asset_root, load_settings
from wikigpt_core.release.gguf_release import MEASUREMENTS, gguf_file, run_gguf_release


@pytest.fixture(scope="module")
def gguf_release(inputs, llama_venv):
    tmp, release, shards = inputs
    return release, run_gguf_release(made.CFG, release, shards, tmp / "tiny" / "gguf_release" / "made").path


inputs = made.inputs
llama_venv = made.llama_venv


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    return apply_overrides(load_settings("tiny"), {"release": {"gguf": True}})


def _copy(src, settings, version: str):
    dst = asset_root(settings, "gguf_release") / version
    shutil.copytree(src, dst)
    return dst


def test_every_gguf_file_answers_in_llama_cpp(gguf_release, settings):
    release, made_dir = gguf_release
    good = run_check(settings, "gguf_files_answer_in_llama_cpp", hf_release=release,
                     gguf_release=_copy(made_dir, settings, "good"))
    assert good.passed, good.description
    assert good.severity == dg.AssetCheckSeverity.ERROR  # blocking: a failure stops the run
    assert set(good.metadata) == {gguf_file(made.REPO_NAME, label) for label in ("f16", "Q8_0", "Q4_K_M")}

    broken = _copy(made_dir, settings, "broken")
    q4 = broken / gguf_file(made.REPO_NAME, "Q4_K_M")
    q4.write_bytes(q4.read_bytes()[: q4.stat().st_size // 2])  # a cut-off download
    bad = run_check(settings, "gguf_files_answer_in_llama_cpp", hf_release=release, gguf_release=broken)
    assert not bad.passed and bad.description == f"no answer from {q4.name}"
    assert bad.metadata[q4.name].value.startswith("[does not load]")


def test_perplexity_bounds_warn(gguf_release, settings):
    release, made_dir = gguf_release
    within = run_check(settings, "gguf_perplexity_within_bounds", hf_release=release,
                       gguf_release=_copy(made_dir, settings, "within"))
    assert within.passed, within.description

    drifted = _copy(made_dir, settings, "drifted")
    measured = json.loads((drifted / "run" / MEASUREMENTS).read_text())
    measured["files"]["Q4_K_M"]["perplexity"] = measured["files"]["f16"]["perplexity"] * 1.08
    (drifted / "run" / MEASUREMENTS).write_text(json.dumps(measured))
    over = run_check(settings, "gguf_perplexity_within_bounds", hf_release=release, gguf_release=drifted)
    assert not over.passed and over.severity == dg.AssetCheckSeverity.WARN
    assert "Q4_K_M 1.0800x f16 (limit 1.05x)" in over.description

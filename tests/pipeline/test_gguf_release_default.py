"""gguf_release on the embedded default: after `wikigpt run` made the tiny release, the same
pipeline job with `[release] gguf = true` materializes gguf_release in that instance and runs its
two checks. The tiny model is 128 wide, so llama.cpp's Q4_K_M holds fallback types, not Q4_K."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from tests.llamacpp.server import llamacpp_python
from wikigpt_core.config import apply_overrides
from wikigpt_core.release.gguf_release import LABELS, MEASUREMENTS
from wikigpt_core.release.llamacpp import VENV_ENV
from wikigpt_pipeline.jobs import PIPELINE_JOB
from wikigpt_pipeline.project import build_definitions

pytestmark = pytest.mark.slow


def test_gguf_release_materializes_on_the_embedded_default(materialized, monkeypatch):
    monkeypatch.setenv(VENV_ENV, str(Path(llamacpp_python()).parent.parent))
    settings = apply_overrides(materialized.settings, {"release": {"gguf": True}})
    job = build_definitions(settings).resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(instance=materialized.instance, raise_on_error=False,
                                    asset_selection=[dg.AssetKey("gguf_release")])
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["gguf_files_answer_in_llama_cpp"].passed, checks["gguf_files_answer_in_llama_cpp"].description
    assert "gguf_perplexity_within_bounds" in checks  # non-blocking: its verdict is reported below

    folder = materialized.artifact("gguf_release")
    measured = json.loads((folder / "run" / MEASUREMENTS).read_text())
    files = measured["files"]
    assert set(files) == set(LABELS)
    # f16 in llama.cpp computes what the release's own weights compute, on the same windows
    assert files["f16"]["perplexity"] == pytest.approx(measured["release_perplexity"], rel=2e-3)
    # no weight row of the 128-wide tiny model holds a 256-weight K-quant block
    assert "Q4_K" not in files["Q4_K_M"]["tensor_types"]
    assert files["Q4_K_M"]["bytes"] < files["Q8_0"]["bytes"] < files["f16"]["bytes"]
    print("\n" + (folder / "run" / "quantization.md").read_text())
    print("ppl check:", checks["gguf_perplexity_within_bounds"].description)
    for label, row in files.items():
        print(label, "chat:", repr(row["chat"]["content"][:80]))

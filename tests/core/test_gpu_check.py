"""benchmarks/gpu_check.py as a bare GPU machine runs it: without dagster, phase by phase, the
JSON rewritten after each phase, a failing or late phase recorded while the others still run.
Here on CPU through --dry-run (micro shapes), plus its checks shown able to fail."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

# What a bare GPU image (torch, numpy, pyarrow, tokenizers, safetensors, transformers, pytest)
# lacks of the project's dependencies: these raise on import, as there.
ABSENT = ("dagster", "dagster_webserver", "dagster_pipes", "dagster_postgres", "pandas", "datasketch",
          "mwparserfromhell", "wikiextractor", "fastapi", "uvicorn", "gensim", "py3langid", "matplotlib",
          "markdown_it", "wandb", "openai", "gguf", "sky")
# Phases a CPU may legitimately skip, and why.
CPU_SKIPS = {"vllm": ("vllm is not installed", "dry run: vLLM needs the GPU")}
CHECKS = {"untrained loss is ln(vocab) +- 0.5", "compiled and eager losses agree on one step",
          "DPO step-0 loss is ln 2 (policy = reference)", "a document-masked block's loss equals its examples' losses"}


HIDDEN_PROBE = f"""
import importlib
for name in {ABSENT!r}:
    try:
        importlib.import_module(name)
    except ImportError as e:
        assert "bare GPU machine" in str(e), (name, e)
    else:
        raise SystemExit(name + " is importable")
"""


def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment with the packages in ABSENT made unimportable."""
    fake = tmp_path / "bare_machine"
    for name in ABSENT:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on a bare GPU machine')\n")
    # As the bare machine runs it: from the repository root with PYTHONPATH=.
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(fake), "."]), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = bare_env(tmp)
    probe = subprocess.run([sys.executable, "-c", HIDDEN_PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr  # the harness really hides them
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report_path = tmp / "out" / gpu_check.REPORT_FILE
    return done, json.loads(report_path.read_text()) if report_path.exists() else None


def test_dry_run_without_dagster_passes_every_phase(dry_run):
    done, report = dry_run
    assert done.returncode == 0, done.stderr[-4000:]
    assert report["dry_run"] is True and report["ok"] is True and report["device"] == "cpu"
    assert list(report["phases"]) == [p.name for p in gpu_check.PHASES]
    for name, row in report["phases"].items():
        if row["status"] == "skipped":
            assert row["reason"].startswith(CPU_SKIPS[name]), (name, row["reason"])
        else:
            assert row["status"] == "ok", (name, row.get("error"), row["stderr_tail"])
        assert "stderr_tail" in row and row["seconds"] >= 0


def test_dry_run_records_the_sanity_checks(dry_run):
    _, report = dry_run
    assert {c["check"] for c in report["sanity"]} == CHECKS
    assert all(c["ok"] and {"expected", "got", "phase"} <= set(c) for c in report["sanity"])


def test_dry_run_gpu_tests_collect_without_dagster(dry_run):
    _, report = dry_run
    tests = report["phases"]["tests"]
    assert tests["exit_code"] == 0 and tests["counts"].get("skipped", 0) >= 5, tests["summary"]


def test_dry_run_training_figures(dry_run):
    _, report = dry_run
    for name in ("pretrain", "sft_packed", "dpo"):
        row = report["phases"][name]
        assert row["tokens_per_s"] > 0 and row["timed_steps"] >= 2 and row["grad_accum"] >= 2, name
        assert row["sdpa_backend"] == ["flash_cpu"], (name, row["attention_ops"])
        assert row["dynamo"]["graph_breaks"] == 0
    assert report["phases"]["calibration"]["tflops_median"] > 0
    assert report["phases"]["decode"]["generated_tokens"] > 0


def dry_args(tmp_path: Path, deadline_s: float = 480.0):
    return type("Args", (), {"out": tmp_path, "dry_run": True, "deadline_s": deadline_s})


def test_a_failing_phase_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    # A phase name the child does not know: it exits with argparse's error on stderr.
    broken = gpu_check.Phase("no_such_phase", gpu_check.phase_calibration, need_s=1, cap_s=60)
    monkeypatch.setattr(gpu_check, "PHASES", (broken, gpu_check.PHASE_BY_NAME["calibration"]))
    assert gpu_check.run_all(dry_args(tmp_path)) == 1
    report = json.loads((tmp_path / gpu_check.REPORT_FILE).read_text())
    failed = report["phases"]["no_such_phase"]
    assert failed["status"] == "failed" and "invalid choice" in failed["error"]
    assert "usage:" in failed["stderr_tail"]
    assert report["phases"]["calibration"]["status"] == "ok"
    assert report["failed_phases"] == ["no_such_phase"] and report["ok"] is False


def test_past_the_deadline_phases_are_skipped_and_the_json_written(tmp_path):
    assert gpu_check.run_all(dry_args(tmp_path, deadline_s=0)) == 0
    report = json.loads((tmp_path / gpu_check.REPORT_FILE).read_text())
    assert {row["status"] for row in report["phases"].values()} == {"skipped"}
    assert all(row["reason"].startswith("deadline") for row in report["phases"].values())


def test_a_child_past_its_time_is_killed():
    t0 = time.monotonic()
    code, _ = gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1)
    assert code is None and time.monotonic() - t0 < 30


@pytest.mark.parametrize("ops,backends", [
    ({"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_backward"}, ["flash"]),
    ({"aten::_scaled_dot_product_cudnn_attention"}, ["cudnn"]),
    ({"aten::_scaled_dot_product_efficient_attention"}, ["efficient"]),
    ({"aten::_scaled_dot_product_flash_attention_for_cpu"}, ["flash_cpu"]),  # not the CUDA flash kernel
    ({"aten::scaled_dot_product_attention", "aten::_flash_attention_forward"}, []),  # names the op exactly
])
def test_sdpa_backend_is_named_by_the_exact_op(ops, backends):
    assert gpu_check.sdpa_backends(ops) == backends


def test_doc_mask_check_fails_when_attention_leaks_across_examples(monkeypatch):
    setup = gpu_check.make_setup(dry=True)
    torch.manual_seed(0)
    model = gpu_check.GPT(setup.model)
    blocks = gpu_check.packed_blocks(setup.model.vocab_size, setup.seq, blocks=1)
    block = {k: v[0] for k, v in blocks.items()}
    assert gpu_check.doc_mask_check(model, block, torch.device("cpu"))["ok"]

    import wikigpt_core.model as model_module

    def leaking_layout(doc_ids):  # plain causal attention and positions: what a leak looks like
        B, T = doc_ids.shape
        causal = torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T)
        return causal, torch.arange(T).expand(B, T)

    monkeypatch.setattr(model_module, "document_layout", leaking_layout)
    leaked = gpu_check.doc_mask_check(model, block, torch.device("cpu"))
    assert not leaked["ok"] and leaked["examples"] >= 2


def test_loss_checks_fail_far_from_their_expectation():
    assert not gpu_check.untrained_loss_check(9.0, vocab=32_768)["ok"]  # ln 32768 = 10.4
    assert gpu_check.untrained_loss_check(10.5, vocab=32_768)["ok"]
    assert not gpu_check.check("nan", 1.0, float("nan"), 0.5)["ok"]


def test_gpu_setup_times_enough_steps_at_enough_accumulation():
    setup = gpu_check.make_setup(dry=False)
    assert setup.warm_steps >= 3 and setup.timed_steps >= 20 and setup.grad_accum >= 4
    assert (setup.model_name, setup.seq, setup.matmul_n, setup.compile) == ("124m", 1_024, 8_192, "on")
    assert gpu_check.stage_config("pretrain", setup).batch_size == 16
    assert dataclasses.replace(setup, dry=True).timer == "perf_counter" and setup.timer == "cuda events"

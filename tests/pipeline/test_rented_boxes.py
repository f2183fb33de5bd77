"""What the rented boxes run, checked without SkyPilot: the image each task YAML names, whether
the teacher model fits its card, the extras a box installs, and the NCCL setting of several
GeForce cards. (tests/cloud runs the same plans through SkyPilot's own validation.)"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from wikigpt_core.config import TeacherConfig, load_settings
from wikigpt_core.stages import STAGES, resolve_spec
from wikigpt_pipeline.launchers.images import TEACHER_IMAGE, TRAINING_IMAGE, image_for
from wikigpt_pipeline.launchers.remote_plan import (
    BOX_EXTRAS,
    SWITCHED_EXTRAS,
    box_extras,
    loopback_ports,
    plan_task,
)

REPO = Path(__file__).resolve().parents[2]
SKY = REPO / "sky"
GIB = 2**30
CARD_BYTES = {"RTX4090": 24_564 * 2**20}
"""Memory of the cards the teacher YAML may name (SkyPilot's catalog: 24,564 MiB for a 4090)."""
ACTIVATION_RESERVE = 2 * GIB
"""What vLLM needs beside weights and KV cache (activations of a max-length prefill, CUDA graphs,
sampler buffers), kept inside gpu_memory_utilization."""


def task_yaml(task: str) -> dict:
    return yaml.safe_load((SKY / f"{task}.yaml").read_text())


# --- images -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(SKY.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_task_names_the_image_its_constant_declares(path):
    assert task_yaml(path.stem)["resources"]["image_id"] == image_for(path.stem)


def test_training_image_carries_a_torch_the_project_supports():
    """`pytorch/pytorch:<torch>-cuda<x.y>-cudnn9-runtime`, a tag public repositories use, whose
    torch is inside pyproject's range (sky/setup.sh refuses any other on the box)."""
    from packaging.requirements import Requirement

    found = re.fullmatch(r"docker:pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn9-runtime", TRAINING_IMAGE)
    assert found, TRAINING_IMAGE
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(r for r in map(Requirement, deps) if r.name == "torch")
    assert torch_req.specifier.contains(found.group(1)), (found.group(1), str(torch_req))
    assert re.fullmatch(r"docker:vllm/vllm-openai:v\d+\.\d+\.\d+", TEACHER_IMAGE)


def test_an_unknown_task_has_no_image():
    with pytest.raises(ValueError, match="images.py"):
        image_for("no-such-task")


# --- the teacher fits its card ------------------------------------------------------------

def teacher_memory(envs: dict) -> dict[str, float]:
    """Bytes of the served teacher: bf16 weights (params x 2 bytes) and the KV cache of
    MAX_NUM_SEQS sequences at MAX_MODEL_LEN (K and V, per layer, per KV head, per head dim)."""
    bf16 = 2
    weights = int(envs["TEACHER_PARAMS"]) * bf16
    kv_per_token = 2 * int(envs["TEACHER_LAYERS"]) * int(envs["TEACHER_KV_HEADS"]) * int(envs["TEACHER_HEAD_DIM"]) * bf16
    kv = kv_per_token * int(envs["MAX_MODEL_LEN"]) * int(envs["MAX_NUM_SEQS"])
    return {"weights": weights, "kv_cache": kv, "kv_per_token": kv_per_token}


def test_the_configured_teacher_fits_its_card():
    teacher = task_yaml("teacher")
    envs = {k: str(v) for k, v in teacher["envs"].items()}
    card = CARD_BYTES[teacher["resources"]["accelerators"].split(":")[0]]
    budget = float(envs["GPU_MEMORY_UTILIZATION"]) * card
    need = teacher_memory(envs)
    # The YAML serves the model the teacher config names, and the shape is that model's.
    assert envs["TEACHER_MODEL"] == TeacherConfig().model == "Qwen/Qwen2.5-7B-Instruct"
    assert need["kv_per_token"] == 57_344  # 2 x 28 layers x 4 KV heads x 128 dims x 2 bytes
    assert need["weights"] + need["kv_cache"] + ACTIVATION_RESERVE <= budget, (
        f"weights {need['weights'] / GIB:.1f} GiB + KV {need['kv_cache'] / GIB:.1f} GiB + reserve "
        f"{ACTIVATION_RESERVE / GIB:.1f} GiB > {budget / GIB:.1f} GiB")
    # Every request the client keeps in flight is served at once, at full context.
    assert TeacherConfig().concurrency <= int(envs["MAX_NUM_SEQS"])
    assert f"--max-model-len \"$MAX_MODEL_LEN\"" in teacher["run"]
    assert "--max-num-seqs \"$MAX_NUM_SEQS\"" in teacher["run"]
    assert "--gpu-memory-utilization \"$GPU_MEMORY_UTILIZATION\"" in teacher["run"]


def test_the_fit_check_refuses_a_context_the_card_cannot_hold():
    """The same arithmetic at 32k context and 64 sequences does not fit: the check can fail."""
    envs = {k: str(v) for k, v in task_yaml("teacher")["envs"].items()}
    need = teacher_memory({**envs, "MAX_MODEL_LEN": "32768", "MAX_NUM_SEQS": "64"})
    assert need["weights"] + need["kv_cache"] > float(envs["GPU_MEMORY_UTILIZATION"]) * CARD_BYTES["RTX4090"]


# --- what a stage box installs, and its NCCL settings -------------------------------------

@pytest.fixture()
def eval_inputs(tmp_path) -> dict[str, Path]:
    """The eval stage's inputs as small artifacts (a manifest each: nothing to hash)."""
    inputs = {name: tmp_path / name for name in STAGES["eval_report"].inputs}
    for path in inputs.values():
        path.mkdir()
        (path / "manifest.json").write_text('{"content_hash": "%s"}' % ("0" * 64))
    return inputs


def test_extras_follow_the_stage_config(eval_inputs):
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(BOX_EXTRAS) | set(SWITCHED_EXTRAS.values()) <= set(optional)  # real extras
    settings = load_settings("124m", env=False)
    assert settings.eval.lm_eval  # 124m turns lm-evaluation-harness on ...
    spec = resolve_spec(settings, "eval_report", eval_inputs)
    assert box_extras(spec) == "wandb,lmeval"  # ... so the eval box installs it
    tiny = resolve_spec(load_settings("tiny", env=False), "eval_report", eval_inputs)
    assert box_extras(tiny) == "wandb"


def _plan(tmp_path: Path, accelerators: str, envs: dict | None = None):
    out = tmp_path / "out"
    return plan_task(sky_dir=SKY, stage="base_checkpoint", cli_args=["--out", str(out)], outputs=[out],
                     workdir=REPO, environ={}, accelerators=accelerators, envs=envs)


@pytest.mark.parametrize("accelerators, p2p_off", [
    ("RTX4090:4", True), ("RTX3090:2", True), ("RTX5090:8", True),
    ("RTX4090:1", False),              # one card: no peer-to-peer at all
    ("A100:8", False), ("H100:4", False), ("RTX6000:2", False),  # datacenter / workstation cards
])
def test_several_geforce_cards_turn_nccl_peer_to_peer_off(tmp_path, accelerators, p2p_off):
    envs = _plan(tmp_path, accelerators).config["envs"]
    assert (envs.get("NCCL_P2P_DISABLE") == "1") is p2p_off


def test_a_users_own_nccl_setting_wins(tmp_path):
    envs = _plan(tmp_path, "RTX4090:4", {"NCCL_P2P_DISABLE": "0"}).config["envs"]
    assert envs["NCCL_P2P_DISABLE"] == "0"


def test_only_loopback_services_are_forwarded_to_the_box(eval_inputs):
    spec = resolve_spec(load_settings("tiny", env=False), "eval_report", eval_inputs)
    spec.services = {"teacher_url": "http://127.0.0.1:41234/v1"}
    assert loopback_ports(spec) == [41234]
    spec.services = {"teacher_url": "https://judge.example.org/v1"}
    assert loopback_ports(spec) == []

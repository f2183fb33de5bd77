"""The task YAMLs and the launcher's plans, checked by the real SkyPilot package, offline.

Needs the `cloud` extra (`skypilot[vast]`); skipped where `sky` cannot be imported. No network:
the optimizer and the dry run read a seeded catalog under an isolated HOME, with a fake vast
key, and the subprocess runs behind a dead proxy so any download attempt fails loudly.
"""
import atexit
import csv
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.needs import missing
from wikigpt_core.stages import STAGES
from wikigpt_pipeline.launchers.images import TRAINING_IMAGE, image_for

# SkyPilot keeps its catalogs and state under $SKY_RUNTIME_DIR (default: ~) and resolves the
# path at import, so point it at a throwaway dir before importing; it is seeded below.
_RUNTIME = Path(tempfile.mkdtemp(prefix="wikigpt-sky-runtime-"))
atexit.register(shutil.rmtree, _RUNTIME, ignore_errors=True)
os.environ["SKY_RUNTIME_DIR"] = str(_RUNTIME)
try:
    import sky

    # From the repo root, the `sky/` folder of task YAMLs imports as an empty namespace
    # package; only a real SkyPilot install has a module file.
    if getattr(sky, "__file__", None) is None:
        raise ImportError("`sky` is only the repository's YAML folder")
except ImportError as e:
    # Skips locally; with CI=true it fails: CI installs the cloud extra, so no `sky` is a broken install.
    missing(f"SkyPilot (the `cloud` extra: pip install -e \".[cloud]\"): {e}")

pytestmark = pytest.mark.cloud
REPO = Path(__file__).resolve().parents[2]
YAMLS = sorted((REPO / "sky").glob("*.yaml"))
GPU_TASKS = {"pretrain", "sft", "preference", "dpo", "eval", "teacher"}
TEACHER_TASKS = {s.task for s in STAGES.values() if s.launched and s.teacher}
"""Boxes whose stage calls the teacher, so they carry its key."""


@pytest.fixture(scope="module", autouse=True)
def offline_catalog():
    """Even `Task.from_yaml` reads the common accelerator catalog (to canonicalize
    `RTX4090`); without a local copy it would try to download it."""
    seed_offline_home(_RUNTIME, with_key=False)


def test_every_stage_has_a_task_yaml():
    assert {p.stem for p in YAMLS} == GPU_TASKS


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_loads_and_validates_with_skypilots_loader(path, monkeypatch):
    monkeypatch.chdir(REPO)  # `workdir: .` is relative to where `sky launch` runs
    task = sky.Task.from_yaml(str(path))
    task.validate(skip_file_mounts=True)
    (res,) = task.resources
    assert str(res.cloud) == "Vast"
    assert res.accelerators == {"RTX4090": 1}
    assert res.image_id[None] == image_for(path.stem)  # the tag images.py names, as SkyPilot reads it
    assert res.disk_size >= 60
    assert res.autostop_config.enabled and res.autostop_config.down
    # Secrets are resolved at launch, never inline values.
    assert not task.secrets
    secrets = {r.name for r in task.managed_secret_refs}
    if path.stem == "teacher":
        assert "vllm serve" in task.run and "Qwen/Qwen2.5-7B-Instruct" in task.envs.values()
        # The private line: no port open to the internet, vLLM on the box's loopback only,
        # and no pip install on paid time (the image is vLLM's own).
        assert not res.ports and "--host 127.0.0.1" in task.run
        assert "pip install" not in (task.setup or "") + task.run
        # Only what serving needs: the API key, and a read token for a gated model.
        assert secrets == {"VLLM_API_KEY", "HF_READ_TOKEN"}
    else:  # Hub sync, W&B, and the teacher's key where the stage calls it
        teacher_key = {"WIKIGPT_TEACHER_API_KEY"} if path.stem in TEACHER_TASKS else set()
        assert secrets == {"HF_TOKEN", "WANDB_API_KEY"} | teacher_key
        assert Path(task.workdir) == REPO  # `workdir: .` expanded by validate()
        assert task.setup.strip() == "bash sky/setup.sh"  # installs around the image's torch
        # Which stage runs comes from the launcher (WIKIGPT_STAGE, from the stage registry).
        assert task.run.strip() == "bash sky/run_stage.sh"
        assert path.stem in {s.task for s in STAGES.values() if s.launched}
        assert task.envs["PYTHONUNBUFFERED"] == "1"


# --- offline optimizer and dry run -------------------------------------------------------

VAST_ROWS = [  # the columns sky/catalog/data_fetchers/fetch_vast.py writes
    ("1x-RTX_4090-16-64000", "RTX4090", 1, 16, 62.5, 0.40, 0.25, "Texas, US", 0),
    ("2x-RTX_4090-32-128000", "RTX4090", 2, 32, 125.0, 0.80, 0.50, "Quebec, CA", 1),
    ("1x-RTX_3090-12-32000", "RTX3090", 1, 12, 31.25, 0.22, 0.12, "Texas, US", 0),
]


def seed_offline_home(home: Path, with_key: bool = True) -> Path:
    """~/.sky/catalogs/<schema>/{vast/vms.csv, common/*.csv} and ~/.config/vastai/vast_api_key."""
    from sky.skylet import constants

    catalogs = home / ".sky" / "catalogs" / constants.CATALOG_SCHEMA_VERSION
    (catalogs / "vast").mkdir(parents=True, exist_ok=True)
    (catalogs / "common").mkdir(parents=True, exist_ok=True)
    with (catalogs / "vast" / "vms.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB",
                    "GpuInfo", "Price", "SpotPrice", "Region", "HostingType"])
        for itype, gpu, count, cpus, mem, price, spot, region, hosting in VAST_ROWS:
            info = {"Gpus": [{"Name": gpu, "Count": count,
                              "MemoryInfo": {"SizeInMiB": 24564 * count}}],
                    "TotalGpuMemoryInMiB": 24564 * count}
            w.writerow([itype, gpu, count, cpus, mem, str(info), f"{price:.2f}", f"{spot:.2f}",
                        region, hosting])
    (catalogs / "common" / "accelerators.csv").write_text(
        "AcceleratorName,Clouds\nRTX4090,\"['Vast']\"\nRTX3090,\"['Vast']\"\n")
    (catalogs / "common" / "metadata.csv").write_text(
        "GPU,MemoryGB,Manufacturer\nRTX4090,24,NVIDIA\nRTX3090,24,NVIDIA\n")
    if with_key:
        key = home / ".config" / "vastai" / "vast_api_key"
        key.parent.mkdir(parents=True)
        key.write_text("fake-vast-key-for-offline-tests\n")
    return catalogs


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    catalogs = seed_offline_home(home)
    before = {p: p.stat().st_mtime_ns for p in catalogs.rglob("*.csv")}
    dead = "http://127.0.0.1:9"  # nothing listens there: any download fails at once
    env = {**os.environ, "HOME": str(home), "SKY_RUNTIME_DIR": str(home), "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
           "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": "",
           "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "PYTHONPATH": str(REPO),
           # The dry run builds SkyPilot's own wheel with pip: no index, no isolated build env
           # (setuptools comes from the venv). PIP_NO_BUILD_ISOLATION=0 *disables* isolation.
           "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}
    env.pop("WIKIGPT_CONFIG", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("offline_plan_probe.py")),
                           str(tmp_path_factory.mktemp("scratch"))],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=540)
    # SkyPilot's spinner may leave terminal escapes at the start of the line.
    line = next((l for l in proc.stdout.splitlines() if "PROBE-RESULT " in l), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = line[line.index("PROBE-RESULT "):]
    after = {p: p.stat().st_mtime_ns for p in catalogs.rglob("*.csv")}
    return json.loads(line.removeprefix("PROBE-RESULT ")), before, after


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_vast_is_enabled_by_the_fake_key(probe):
    result, _, _ = probe
    assert "Vast" in sum(result["enabled"].values(), [])


@pytest.mark.parametrize("stage", [s.name for s in STAGES.values() if s.launched])
@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_launcher_plan_passes_skypilots_optimizer(probe, stage):
    plan = probe[0]["plans"][stage]
    chosen = plan["chosen"]
    # One RTX 4090 on vast at the catalog's on-demand price: the SPEC's ~$0.40/h.
    assert chosen["cloud"] == "Vast" and chosen["accelerators"] == {"RTX4090": 1}
    assert chosen["instance"] == "1x-RTX_4090-16-64000" and chosen["hourly"] == pytest.approx(0.40)
    assert chosen["use_spot"] is False
    # Inputs are uploaded through file_mounts; outputs are written under ~/wikigpt_io/out.
    # Inputs only: the stage's direct inputs and its spec, never the rest of its lineage.
    inputs = STAGES[stage].inputs
    assert sorted(plan["file_mounts"]) == sorted(
        [f"~/wikigpt_io/in/{name}" for name in inputs] + ["~/wikigpt_io/in/spec.json"])
    assert plan["stage"] == stage and plan["args"] == "--spec ~/wikigpt_io/in/spec.json"
    remote = plan["remote_spec"]  # the spec the remote stage reads, in the remote layout
    assert remote["out"] == f"~/wikigpt_io/out/{stage}" and remote["stage"] == stage
    assert all(r["path"].startswith("~/wikigpt_io/in/") for r in remote["inputs"].values())
    assert set(remote["lineage"]) == set(inputs)
    assert chosen["image"] == TRAINING_IMAGE
    # The extras the box installs follow the stage: `124m` turns lm-evaluation-harness on.
    assert plan["extras"] == ("wandb,lmeval" if stage == "eval_report" else "wandb")


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_base_checkpoint_uploads_token_shards_and_tokenizer_only(probe):
    """At `124m` the resolved spec's lineage reaches back to the dump; the plan uploads what the
    stage reads and says how much that is."""
    plan = probe[0]["plans"]["base_checkpoint"]
    assert sorted(plan["file_mounts"]) == ["~/wikigpt_io/in/spec.json", "~/wikigpt_io/in/token_shards",
                                           "~/wikigpt_io/in/tokenizer"]
    assert "wiki_dump" in plan["local_lineage"] and "deduped_corpus" in plan["local_lineage"]
    assert plan["upload_bytes"] == plan["mounted_bytes"] and plan["upload_bytes"] < 10_000


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_spot_plan_uses_interruptible_price(probe):
    spot = probe[0]["spot"]
    assert spot["use_spot"] is True and spot["hourly"] == pytest.approx(0.25)


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_teacher_fits_one_4090(probe):
    assert probe[0]["teacher_hourly"] == pytest.approx(0.40)


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_teacher_plan_carries_only_its_secrets_and_opens_no_port(probe):
    """The launcher's teacher plan, as SkyPilot's own Task reads it, with a write token and a
    W&B key in the orchestrator's environment."""
    teacher = probe[0]["teacher_plan"]
    assert teacher["secrets"] == {"VLLM_API_KEY": "<set>", "HF_READ_TOKEN": "<empty>"}
    assert teacher["ports"] is None and teacher["image"] == image_for("teacher")
    assert not {"HF_TOKEN", "WANDB_API_KEY"} & set(teacher["envs"])


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_pretrain_dry_run_and_no_network(probe):
    result, before, after = probe
    assert result["dryrun"] == {"job_id": None, "handle": False}  # dry run: nothing provisioned
    assert before == after  # the seeded catalog was used as is, never re-downloaded


# --- the fake used by the flow tests speaks the real SDK's signatures ----------------------

def test_flow_fake_matches_the_real_sdk_signatures():
    """Every SDK call the launcher makes, bound against the installed SkyPilot's signatures."""
    import sky.jobs

    calls = [
        (sky.launch, ("task",), {"cluster_name": "c"}),
        (sky.stream_and_get, ("rid",), {}),
        (sky.get, ("rid",), {}),
        (sky.status, (), {"cluster_names": ["c"]}),
        (sky.queue, ("c",), {}),
        (sky.tail_logs, ("c", 1), {"follow": True, "output_stream": None}),
        (sky.down, ("c",), {}),
        (sky.Task.from_yaml_config, ({},), {}),
        (sky.jobs.launch, ("task",), {"name": "n"}),
        (sky.jobs.tail_logs, (), {"job_id": 1, "follow": True, "output_stream": None}),
        (sky.jobs.queue, (), {"refresh": False, "skip_finished": True}),
        (sky.jobs.cancel, (), {"job_ids": [1]}),
    ]
    for fn, args, kwargs in calls:
        inspect.signature(fn).bind(*args, **kwargs)
    source = (REPO / "wikigpt_pipeline" / "launchers" / "skypilot.py").read_text()
    for name in ("sky.launch(", "sky.stream_and_get(", "sky.status(", "sky.queue(",
                 "sky.tail_logs(", "sky.down(", "sky.jobs.launch(", "sky.jobs.tail_logs(",
                 "sky.jobs.queue(", "sky.jobs.cancel(", "sky.Task.from_yaml_config("):
        assert name in source, f"launcher no longer calls {name}; update this list"

"""Several GPUs and the box's torch, checked through the real SkyPilot package, offline.

- The launcher's plan for `RTX4090:4` passes SkyPilot's optimizer (a 4x RTX 4090 vast offer)
  and its dry-run launch; running the task's own `run` script with the GPU count SkyPilot chose
  (`SKYPILOT_NUM_GPUS_PER_NODE`) starts `torchrun --nproc_per_node=4` on the stage.
- Several GeForce cards get `NCCL_P2P_DISABLE=1` in the task SkyPilot runs.
- The task's own `setup` cannot replace the image's torch: with the image's torch inside
  pyproject's range it installs the project under a constraint holding that exact build (pip's
  dry-run report installs no torch); with a torch outside the range it refuses before pip runs.

Needs the `cloud` extra; see test_sky_tasks.py for the isolation (seeded catalog under a
throwaway HOME, dead proxy).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.needs import missing
from wikigpt_pipeline.launchers.images import TRAINING_IMAGE

# Found, not imported: SkyPilot fixes its state dir when imported, and test_sky_tasks.py points
# it at a throwaway one first (this module's SkyPilot work runs in a subprocess).
_spec = importlib.util.find_spec("sky")
if _spec is None or _spec.origin is None:  # the repo's sky/ YAML folder has no origin
    missing("SkyPilot (the `cloud` extra: pip install -e \".[cloud]\") is not installed")

pytestmark = pytest.mark.cloud
REPO = Path(__file__).resolve().parents[2]
DEAD = "http://127.0.0.1:9"  # nothing listens there: any download fails at once
FOUR_GPU_ROW = "4x-RTX_4090-64-256000,RTX4090,4,64,250.0,\"{'Gpus': [{'Name': 'RTX4090', 'Count': 4, 'MemoryInfo': {'SizeInMiB': 98256}}], 'TotalGpuMemoryInMiB': 98256}\",1.60,1.00,\"Texas, US\",0\n"


def torch_requirement() -> Requirement:
    """pyproject's torch requirement: the range of torch releases the project supports."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == "torch")


def isolated_env(home: Path) -> dict:
    env = {**os.environ, "HOME": str(home), "SKY_RUNTIME_DIR": str(home), "HTTP_PROXY": DEAD,
           "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "https_proxy": DEAD, "NO_PROXY": "", "no_proxy": "",
           "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "PYTHONPATH": str(REPO),
           "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}  # =0 *disables* isolation
    for k in ("WIKIGPT_CONFIG", "SKYPILOT_NUM_GPUS_PER_NODE", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """What SkyPilot makes of the launcher's RTX4090:4 plan (see gpus_plan_probe.py)."""
    from tests.cloud.test_sky_tasks import seed_offline_home

    home = tmp_path_factory.mktemp("home")
    catalogs = seed_offline_home(home)
    with (catalogs / "vast" / "vms.csv").open("a") as f:
        f.write(FOUR_GPU_ROW)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("gpus_plan_probe.py")),
                           str(tmp_path_factory.mktemp("scratch"))], env=isolated_env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=540)
    line = next((l for l in proc.stdout.splitlines() if "PROBE-RESULT " in l), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[line.index("PROBE-RESULT "):].removeprefix("PROBE-RESULT "))


def recording_python(bin_dir: Path) -> Path:
    """A `python` on PATH that records its argv instead of running anything."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python"
    shim.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$WIKIGPT_ARGV_FILE"\n')
    shim.chmod(0o755)
    return shim


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_rtx4090x4_plan_is_a_4_gpu_offer_and_dry_runs(planned):
    assert planned["cloud"] == "Vast" and planned["accelerators"] == {"RTX4090": 4}
    assert planned["instance"].startswith("4x-RTX_4090") and planned["num_nodes"] == 1
    assert planned["dryrun"] == {"job_id": None, "handle": False}  # nothing provisioned
    assert planned["image"] == TRAINING_IMAGE
    # Four GeForce cards: NCCL must not use their peer-to-peer path (known to hang).
    assert planned["envs"]["NCCL_P2P_DISABLE"] == "1"


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_rtx4090x4_task_runs_the_stage_under_torchrun(planned, tmp_path):
    gpus = planned["accelerators"]["RTX4090"]  # what SkyPilot exports as SKYPILOT_NUM_GPUS_PER_NODE
    argv_file = tmp_path / "argv"
    bin_dir = tmp_path / "bin"
    recording_python(bin_dir)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}, **planned["envs"],
           "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus), "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0",
           "WIKIGPT_ARGV_FILE": str(argv_file)}
    done = subprocess.run(["bash", "-c", planned["run"]], cwd=planned["workdir"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = argv_file.read_text().split()
    assert argv == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                    "-m", "wikigpt_core.run", "base_checkpoint",
                    "--spec", f"{tmp_path}/wikigpt_io/in/spec.json"]


def run_setup(planned, home: Path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {**isolated_env(home), **planned["envs"], "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           **extra_env}
    return subprocess.run(["bash", "-c", planned["setup"]], cwd=planned["workdir"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def test_setup_installs_around_the_images_torch(planned, tmp_path):
    import torch

    assert torch_requirement().specifier.contains(torch.__version__.split("+")[0])  # this venv stands in for the image
    report = tmp_path / "pip-report.json"
    # pip's own dry run of exactly the command the task runs: it resolves, installs nothing.
    done = run_setup(planned, tmp_path, {"PIP_DRY_RUN": "1", "PIP_REPORT": str(report)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    constraint = (tmp_path / "wikigpt_io" / "torch-constraint.txt").read_text().strip()
    assert constraint == f"torch=={torch.__version__}"  # the exact build, local label included
    would_install = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    assert "wikigpt" in would_install and "torch" not in would_install, would_install
    assert int((tmp_path / "wikigpt_io" / "setup_seconds").read_text()) >= 0


@pytest.mark.requires_tool("rsync")  # SkyPilot's dry run refuses to start without it
def image_with_torch(tmp_path: Path, version: str) -> dict:
    """Env for run_setup in which `import torch` finds an image's torch of `version`."""
    fake = tmp_path / "image_site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f'__version__ = "{version}"\n')
    return {"PYTHONPATH": str(tmp_path / "image_site")}


@pytest.mark.parametrize("version", ["2.5.1+cu124", "2.10.0+cu128", "2.14.0+cu130"])
def test_setup_refuses_an_image_whose_torch_is_outside_the_range(planned, tmp_path, version):
    report = tmp_path / "pip-report.json"
    done = run_setup(planned, tmp_path, {**image_with_torch(tmp_path, version),
                                         "PIP_DRY_RUN": "1", "PIP_REPORT": str(report)})
    assert done.returncode == 3
    assert f"the image's torch is {version}" in done.stderr and str(torch_requirement()) in done.stderr
    assert not report.exists() and not (tmp_path / "wikigpt_io" / "setup_seconds").exists()  # pip never ran


def test_setup_accepts_the_oldest_supported_torch(planned, tmp_path):
    """A vendor image's torch 2.11 passes the range check and becomes the pip constraint. (pip's
    offline resolve then fails here, where only this venv's 2.13 is installed.)"""
    done = run_setup(planned, tmp_path, {**image_with_torch(tmp_path, "2.11.0+cu130"), "PIP_DRY_RUN": "1"})
    assert "refusing" not in done.stderr
    assert (tmp_path / "wikigpt_io" / "torch-constraint.txt").read_text().strip() == "torch==2.11.0+cu130"

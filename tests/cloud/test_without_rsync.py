"""The README's test command on a machine without `rsync`: the SkyPilot tests whose dry run
needs it skip with the reason, and fail only under CI=true. rsync is hidden by running pytest
with a PATH that holds only this environment's interpreter (as the browser tests are checked
with chromium hidden)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import require_module

pytestmark = pytest.mark.cloud
REPO = Path(__file__).resolve().parents[2]
NEEDS_RSYNC = "tests/cloud/test_sky_gpus.py::test_rtx4090x4_plan_is_a_4_gpu_offer_and_dry_runs"


def _pytest_without_rsync(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    require_module("sky")
    bin_dir = tmp_path / "bin"  # PATH: the interpreter and nothing else, so no rsync
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    # The inner run gets neither CI nor the outer run's options (CI's --require-passed).
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")} | {"PATH": str(bin_dir)}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", NEEDS_RSYNC],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_without_rsync_a_dry_run_test_skips_with_the_reason(tmp_path):
    done = _pytest_without_rsync(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 skipped" in done.stdout
    assert "`rsync` binary (not on PATH); install it with `apt-get install -y rsync`" in done.stdout


def test_without_rsync_in_ci_the_same_test_fails(tmp_path):
    done = _pytest_without_rsync(tmp_path, ci=True)
    assert done.returncode != 0
    assert "CI=true and a test requirement is missing: the `rsync` binary" in done.stdout

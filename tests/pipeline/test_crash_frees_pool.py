"""`kill -9` of `wikigpt run` during base_checkpoint: the trainer dies with it, the dead run is
marked failed, and the next `wikigpt run` gets the `gpu` slot and starts its GPU stage."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

GPU_STAGE = "base_checkpoint"


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")  # a zombie has stopped; a container may not reap it


def _stage_processes(stage: str, parent: int) -> list[int]:
    """Live children of `parent` running `wikigpt_core.run <stage>`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"wikigpt_core.run" in argv and stage.encode() in argv and _alive(int(entry.name))
                and _parent(int(entry.name)) == parent):
            found.append(int(entry.name))
    return found


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ValueError):
        return None


def _wait_for(what: str, probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s:.0f}s")


def _wikigpt_run(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wikigpt_pipeline.cli", "run"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, process_group=0)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_kill_9_during_base_checkpoint_frees_the_gpu_for_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    env = dict(os.environ)
    first = _wikigpt_run(env, tmp_path / "first.log")
    second = None
    try:
        trainer = _wait_for(f"{GPU_STAGE} started by the first run ({tmp_path / 'first.log'})",
                            lambda: _stage_processes(GPU_STAGE, first.pid), 1_500)
        first.send_signal(signal.SIGKILL)  # the CLI only: its stage is in a group of its own
        first.wait()
        _wait_for("the orphaned trainer to exit", lambda: not any(map(_alive, trainer)), 15)

        from wikigpt_pipeline.instance import get_instance

        instance = get_instance()
        (killed,) = instance.get_runs(limit=1)
        assert killed.status == dg.DagsterRunStatus.STARTED  # nothing has reaped it yet

        t0 = time.monotonic()
        second = _wikigpt_run(env, tmp_path / "second.log")
        _wait_for(f"{GPU_STAGE} started by the next run ({tmp_path / 'second.log'})",
                  lambda: _stage_processes(GPU_STAGE, second.pid), 120)
        print(f"the next run's {GPU_STAGE} started {time.monotonic() - t0:.0f}s after it was launched")
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert "marked failed" in (tmp_path / "second.log").read_text()
        instance.dispose()
    finally:
        for proc in (first, second):
            if proc is not None:
                _kill_group(proc)

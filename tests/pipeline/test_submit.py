"""`wikigpt run --submit` / `wikigpt refresh --submit` put runs on the instance's run queue,
and a real `dagster-daemon run` launches them within the `gpu` pool's limit of one.

The instance is a temporary DAGSTER_HOME whose dagster.yaml is the repo's (SQLite storage, the
`gpu` pool at one slot, Dagster's default queued run coordinator) with only the queue's
polling interval shortened to a second. The submitted code location is the small
tests/pipeline/submit_location.py: two assets that declare `pool=GPU_POOL` (from
wikigpt_pipeline.factory) and hold their step for two seconds, standing in for the GPU stages,
whose real training takes minutes on CPU. Every submission is the CLI itself, run as a
subprocess with the same flags a person types.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.pipeline.servers import stop_group
from wikigpt_pipeline.factory import GPU_POOL
from wikigpt_pipeline.submit import REFRESH_PASS_TAG, SUBMITTED_TAG

REPO = Path(__file__).resolve().parents[2]
STAGES = ("gpu_stage_a", "gpu_stage_b")
QUEUED_LINE = re.compile(r"^queued run ([0-9a-f-]{36}) ", re.M)
ET = dg.DagsterEventType
LOCATION = "gpu_pool_test"


def _home(root: Path) -> Path:
    home = root / "dagster_home"
    home.mkdir(parents=True)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # the repo's file relies on Dagster's default, the queued coordinator; say it explicitly to
    # shorten its polling interval
    coordinator = config.setdefault("run_coordinator", {"module": "dagster.core.run_coordinator",
                                                        "class": "QueuedRunCoordinator"})
    assert coordinator["class"] == "QueuedRunCoordinator"
    coordinator.setdefault("config", {})["dequeue_interval_seconds"] = 1
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # create the storage once: two first commands at the same moment would race to create it
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


def _workspace(root: Path) -> Path:
    ws = root / "workspace.yaml"
    ws.write_text("load_from:\n  - python_module:\n      module_name: tests.pipeline.submit_location\n"
                  f"      attribute: defs\n      working_directory: {REPO}\n      location_name: {LOCATION}\n")
    return ws


def _env(home: Path, root: Path) -> dict[str, str]:
    return os.environ | {"DAGSTER_HOME": str(home), "WIKIGPT_HOME": str(root / "wikigpt_home"),
                         "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wikigpt(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The CLI as a person runs it; stderr (code server notices) to `log`, stdout to a pipe."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "wikigpt_pipeline.cli", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out}\n{proc.log.read_text()[-3000:]}"
    return out


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """With no daemon anywhere, all at once: `wikigpt run --submit --select gpu_stage_a`, the
    same with `--select gpu_stage_b --wait` (it keeps following its run: the daemon test reads
    the rest), into one instance; `wikigpt refresh --submit` into another."""
    root = tmp_path_factory.mktemp("submit")
    ws = _workspace(root)
    home, refresh_home = _home(root / "runs"), _home(root / "refresh")
    env, refresh_env = _env(home, root / "runs"), _env(refresh_home, root / "refresh")
    first = _wikigpt(["run", "--submit", "--workspace", str(ws), "--select", STAGES[0]], env,
                     root / "first.err")
    waiting = _wikigpt(["run", "--submit", "--workspace", str(ws), "--select", STAGES[1], "--wait"], env,
                       root / "waiting.err")
    refresh = _wikigpt(["refresh", "--submit", "--workspace", str(ws)], refresh_env, root / "refresh.err")
    try:
        outs = {STAGES[0]: _finish(first),
                STAGES[1]: waiting.stdout.readline() + waiting.stdout.readline()}  # queued; no daemon
        refresh_out = _finish(refresh)
        run_ids = {}
        for stage, out in outs.items():
            m = QUEUED_LINE.search(out)
            assert m, f"{out}\n{(root / 'waiting.err').read_text()[-3000:]}"
            run_ids[stage] = m.group(1)
        m = QUEUED_LINE.search(refresh_out)
        assert m, refresh_out
        yield {"root": root, "ws": ws, "home": home, "env": env, "run_ids": run_ids, "outs": outs,
               "waiting": waiting, "refresh_home": refresh_home, "refresh_run_id": m.group(1),
               "refresh_out": refresh_out}
    finally:
        for proc in (first, waiting, refresh):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _event_types(instance: dg.DagsterInstance, run_id: str) -> list[ET]:
    return [e.dagster_event.event_type for e in instance.all_logs(run_id) if e.dagster_event]


def _assert_waiting(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None, f"run {run_id} is not in the instance"
    assert run.status == dg.DagsterRunStatus.QUEUED, run.status
    kinds = _event_types(instance, run_id)
    assert ET.RUN_ENQUEUED in kinds, kinds
    assert not {ET.RUN_DEQUEUED, ET.RUN_START, ET.STEP_START} & set(kinds), kinds
    return run


def test_submitted_runs_sit_queued_without_a_daemon(submitted):
    """Without a daemon nothing executes: each submitted run is in the instance, QUEUED, with
    its asset selection and the code location the daemon will launch it from; the CLI said so."""
    instance = dg.DagsterInstance.from_config(str(submitted["home"]))
    try:
        for stage, run_id in submitted["run_ids"].items():
            run = _assert_waiting(instance, run_id)
            assert run.asset_selection == {dg.AssetKey(stage)}
            assert run.tags[SUBMITTED_TAG] == "run"
            assert run.remote_job_origin.location_name == LOCATION
            out = submitted["outs"][stage]
            assert f"queued run {run_id} (wikigpt_pipeline: {stage})" in out
            assert "no dagster-daemon is running" in out, out
        assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                                      dg.DagsterRunStatus.SUCCESS]))
    finally:
        instance.dispose()

    # refresh --submit: one run of the refresh selection, here both never-materialized stages
    instance = dg.DagsterInstance.from_config(str(submitted["refresh_home"]))
    try:
        run = _assert_waiting(instance, submitted["refresh_run_id"])
        assert run.asset_selection == {dg.AssetKey(s) for s in STAGES}
        assert run.tags[SUBMITTED_TAG] == "refresh" and run.tags[REFRESH_PASS_TAG] == "1"
        assert "gpu_stage_a, gpu_stage_b" in submitted["refresh_out"]
        assert len(instance.get_runs()) == 1
    finally:
        instance.dispose()


def _step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    starts = [e.timestamp for e in instance.all_logs(run_id, of_type=ET.STEP_START)]
    ends = [e.timestamp for e in instance.all_logs(run_id, of_type=ET.STEP_SUCCESS)]
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)
    return starts[0], ends[0]


def test_two_submitted_gpu_stages_never_overlap(submitted, tmp_path):
    """Both runs queued at once, then one daemon: it launches both, and the `gpu` pool (one
    slot, from the repo's dagster.yaml) lets one GPU step run at a time. The event log's step
    windows (STEP_START..STEP_SUCCESS) of the two runs are disjoint."""
    instance = dg.DagsterInstance.from_config(str(submitted["home"]))
    run_ids = list(submitted["run_ids"].values())
    try:
        for run_id in run_ids:  # both are waiting in the queue at the same moment
            _assert_waiting(instance, run_id)
        log = tmp_path / "daemon.log"
        with log.open("w") as out:
            daemon = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(submitted["ws"])],
                cwd=REPO, env=submitted["env"], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            deadline = time.monotonic() + 240  # a bound for a stuck queue, not a timing claim
            while True:
                runs = [instance.get_run_by_id(r) for r in run_ids]
                if all(r.is_finished for r in runs):
                    break
                assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, \
                    f"runs still {[r.status.value for r in runs]}:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        finally:
            stop_group(daemon)
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2, \
            [(r.run_id, r.status) for r in runs]
        # `--wait` followed its run to the end and printed what it materialized
        waited = _finish(submitted["waiting"])
        stage, run_id = STAGES[1], submitted["run_ids"][STAGES[1]]
        for line in (f"run {run_id[:8]} STARTED", f"  {stage:<20} started", f"  {stage:<20} done in ",
                     f"run {run_id} SUCCESS after "):
            assert line in waited, waited

        enqueued = [e.timestamp for r in run_ids for e in instance.all_logs(r, of_type=ET.RUN_ENQUEUED)]
        (s1, e1), (s2, e2) = sorted(_step_window(instance, r) for r in run_ids)
        assert len(enqueued) == 2 and max(enqueued) < s1  # both were queued before either step ran
        assert e1 <= s2, f"GPU steps overlap: [{s1:.2f}, {e1:.2f}] and [{s2:.2f}, {e2:.2f}]"
        for run_id, stage in zip(run_ids, submitted["run_ids"]):
            mats = instance.fetch_materializations(dg.AssetKey(stage), limit=1).records
            assert mats and mats[0].run_id == run_id
        pool = instance.event_log_storage.get_concurrency_info(GPU_POOL)
        assert pool.limit == 1 and not pool.claimed_slots  # the repo's limit; both slots freed
    finally:
        instance.dispose()

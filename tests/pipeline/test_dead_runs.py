"""A run whose process died is marked failed and its `gpu` slot freed (wikigpt_pipeline.dead_runs)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from wikigpt_pipeline import dead_runs


@pytest.fixture()
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        yield instance


def _dead_owner() -> str:
    """The owner tag of a process that has exited: same host, a pid no longer running it."""
    proc = subprocess.Popen([sys.executable, "-c", "from wikigpt_pipeline.dead_runs import owner_tags; "
                             "print(owner_tags()['wikigpt/owner'], flush=True)"],
                            stdout=subprocess.PIPE, text=True)
    owner = proc.stdout.readline().strip()
    proc.wait()
    return owner


def _started_run_holding_gpu(instance, owner: str) -> str:
    run = instance.add_run(DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED,
                                      tags={dead_runs.OWNER_TAG: owner}))
    assert instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "base_checkpoint").is_claimed
    return run.run_id


def _gpu_slot_holders(instance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return {slot.run_id for slot in info.claimed_slots}


def test_a_run_whose_process_died_is_failed_and_frees_the_gpu_slot(instance):
    dead = _started_run_holding_gpu(instance, _dead_owner())
    assert _gpu_slot_holders(instance) == {dead}
    assert dead_runs.reap(instance) == [dead]
    assert instance.get_run_by_id(dead).status == DagsterRunStatus.FAILURE
    assert _gpu_slot_holders(instance) == set()
    failure = instance.get_records_for_run(dead, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert "is gone" in failure[0].event_log_entry.message


def test_a_live_or_foreign_run_is_left_alone(instance):
    live = _started_run_holding_gpu(instance, dead_runs.owner_tags()[dead_runs.OWNER_TAG])
    assert dead_runs.reap(instance) == []
    assert instance.get_run_by_id(live).status == DagsterRunStatus.STARTED
    assert _gpu_slot_holders(instance) == {live}
    instance.event_log_storage.free_concurrency_slots_for_run(live)
    foreign = _started_run_holding_gpu(instance, f"another-host:{os.getpid() + 1}:1")
    assert dead_runs.reap(instance) == []
    assert instance.get_run_by_id(foreign).status == DagsterRunStatus.STARTED


def test_a_reused_pid_is_not_mistaken_for_the_owner():
    host, pid, start = dead_runs.owner_tags()[dead_runs.OWNER_TAG].rsplit(":", 2)
    assert not dead_runs.owner_is_gone(f"{host}:{pid}:{start}")
    assert dead_runs.owner_is_gone(f"{host}:{pid}:{int(start) + 1}")


def test_a_finished_run_still_holding_a_slot_has_it_freed(instance):
    run_id = _started_run_holding_gpu(instance, "elsewhere:1:1")
    instance.report_run_failed(instance.get_run_by_id(run_id))
    dead_runs.reap(instance)
    assert _gpu_slot_holders(instance) == set()


def test_a_waiting_process_reaps_in_the_background(instance):
    dead = _started_run_holding_gpu(instance, _dead_owner())
    with dead_runs.reaping(instance, interval_s=0.2):
        deadline = time.monotonic() + 30
        while _gpu_slot_holders(instance) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _gpu_slot_holders(instance) == set()
    assert instance.get_run_by_id(dead).status == DagsterRunStatus.FAILURE

"""A small code location for the run-queue tests: two independent assets that declare the
project's GPU pool (`factory.GPU_POOL`) and stand in for the GPU stages (training a real one
on CPU takes minutes).

Each keeps its step open until another run's GPU step has either started or been held back by
the pool (Dagster logs "Step blocked by limit for pool gpu" in that run), or at most HOLD_S
seconds. So without the pool limit two such steps overlap (unless the second starts more than
HOLD_S after the first); with it, the second waits for the first."""
from __future__ import annotations

import time

import dagster as dg

from wikigpt_pipeline.factory import GPU_POOL
from wikigpt_pipeline.jobs import PIPELINE_JOB

HOLD_S = 15.0  # a bound for when the queue (not the step) holds the other run back
ET = dg.DagsterEventType


def other_gpu_step_seen(instance: dg.DagsterInstance, run_id: str) -> bool:
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=PIPELINE_JOB)):
        if run.run_id == run_id:
            continue
        for record in instance.get_records_for_run(
                run.run_id, of_type={ET.STEP_START, ET.ENGINE_EVENT}).records:
            entry = record.event_log_entry
            if entry.dagster_event.event_type == ET.STEP_START:
                return True
            if f"blocked by limit for pool {GPU_POOL}" in (entry.message or ""):
                return True
    return False


def _gpu_stage(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, pool=GPU_POOL, kinds={"pytorch"})
    def _stage(context) -> dg.MaterializeResult:
        t0 = time.monotonic()
        while time.monotonic() - t0 < HOLD_S and not other_gpu_step_seen(context.instance, context.run_id):
            time.sleep(0.2)
        time.sleep(0.5)  # still inside the step after the other one was seen
        return dg.MaterializeResult(metadata={"held_s": round(time.monotonic() - t0, 2)})

    return _stage


defs = dg.Definitions(
    assets=[_gpu_stage("gpu_stage_a"), _gpu_stage("gpu_stage_b")],
    jobs=[dg.define_asset_job(PIPELINE_JOB, selection=dg.AssetSelection.all())],
)

"""Jobs and schedules."""
from __future__ import annotations

import os

import dagster as dg

PIPELINE_JOB = "wikigpt_pipeline"
EVAL_REFRESH_JOB = "eval_refresh"
DEFAULT_EVAL_CRON = "0 6 * * 1"  # weekly, Monday 06:00 UTC

pipeline_job = dg.define_asset_job(
    PIPELINE_JOB, selection=dg.AssetSelection.all(),
    description="Materialize the whole graph, dump to release.",
)

eval_refresh_job = dg.define_asset_job(
    EVAL_REFRESH_JOB, selection=dg.AssetSelection.assets("eval_report"),
    description="Re-run the evaluation battery (incl. judge runs) on the latest checkpoints.",
)


def eval_refresh_schedule() -> dg.ScheduleDefinition:
    """Weekly by default; WIKIGPT_EVAL_CRON overrides the cron expression."""
    return dg.ScheduleDefinition(
        name="eval_refresh_schedule",
        job=eval_refresh_job,
        cron_schedule=os.environ.get("WIKIGPT_EVAL_CRON", DEFAULT_EVAL_CRON),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )

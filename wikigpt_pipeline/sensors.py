"""Run-failure sensor: say what failed and where its logs are."""
from __future__ import annotations

import dagster as dg


@dg.run_failure_sensor(name="report_run_failure", default_status=dg.DefaultSensorStatus.RUNNING)
def report_run_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    failed_steps = [e.step_key for e in context.get_step_failure_events()]
    message = context.failure_event.message or ""
    context.log.error(
        f"run {run.run_id} of job {run.job_name} failed at {failed_steps or ['(run level)']}: "
        f"{message}. Logs: Dagster UI → Runs → {run.run_id}, or "
        f"`dagster debug export {run.run_id} out.gz`; stage scratch under $WIKIGPT_HOME/<profile>/_work."
    )

"""Run-failure sensor: say what failed and where its logs are."""
from __future__ import annotations

import dagster as dg


def failure_summary(run_id: str, job_name: str, failed_steps: list[str], message: str) -> str:
    steps = ", ".join(failed_steps) or "(run level)"
    return (
        f"WikiGPT run {run_id} of job {job_name} failed at {steps}: {message.strip()}\n"
        f"  logs: Dagster UI → Runs → {run_id} (or `dagster debug export {run_id} run.gz`)\n"
        f"  stage scratch: $WIKIGPT_HOME/<profile>/_work/<asset>; the previous artifacts are untouched"
    )


@dg.run_failure_sensor(name="report_run_failure", default_status=dg.DefaultSensorStatus.RUNNING)
def report_run_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    failed = [e.step_key for e in context.get_step_failure_events() if e.step_key]
    context.log.error(failure_summary(run.run_id, run.job_name, failed,
                                      context.failure_event.message or ""))

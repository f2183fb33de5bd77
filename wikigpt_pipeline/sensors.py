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
    events = context.get_step_failure_events()
    failed = [e.step_key for e in events if e.step_key]
    message = context.failure_event.message or ""
    causes = [c for c in (_root_cause(e) for e in events) if c]
    if causes:  # the run-level message only lists the steps; the error itself is on each step
        message += "\n  cause: " + "\n  cause: ".join(causes)
    context.log.error(failure_summary(run.run_id, run.job_name, failed, message))


def _root_cause(step_failure: dg.DagsterEvent) -> str:
    """The innermost error of a step failure ("RuntimeError: no dump at ..."): Dagster wraps
    the stage's exception in its own step-execution error."""
    err = getattr(step_failure.event_specific_data, "error", None)
    while err is not None and err.cause is not None:
        err = err.cause
    return err.message.strip() if err is not None else ""

"""Schedules, sensors and automation conditions, evaluated against real instances."""
from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from wikigpt_core.config import load_settings
from wikigpt_pipeline.automation import data_eager
from wikigpt_pipeline.jobs import DEFAULT_EVAL_CRON, eval_refresh_schedule
from wikigpt_pipeline.project import build_definitions
from wikigpt_pipeline.sensors import report_run_failure


def test_eval_schedule_tick_targets_eval_report():
    defs = build_definitions(load_settings("tiny"))
    schedule = defs.resolve_schedule_def("eval_refresh_schedule")
    assert schedule.cron_schedule == DEFAULT_EVAL_CRON  # weekly by default
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance,
                                        scheduled_execution_time=dt.datetime(2026, 11, 23, 6, tzinfo=dt.timezone.utc))
        data = schedule.evaluate_tick(ctx)
    assert len(data.run_requests) == 1
    job = defs.resolve_job_def(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {"eval_report"}


def test_eval_schedule_cron_is_configurable(monkeypatch):
    monkeypatch.setenv("WIKIGPT_EVAL_CRON", "0 3 * * *")
    assert eval_refresh_schedule().cron_schedule == "0 3 * * *"


def test_failure_sensor_reports_step_cause_and_where_the_logs_are():
    """The sensor evaluated on a real failed run: what it logs names the run, the job, the
    failed step and the stage's own error (not only Dagster's "steps failed" line)."""
    import logging

    @dg.asset
    def broken():
        raise RuntimeError("no dump at /nowhere")

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines: list[tuple[str, str]] = []

        def emit(self, record):
            self.lines.append((record.levelname, record.getMessage()))

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        ctx = dg.build_run_status_sensor_context(sensor_name="report_run_failure",
                                                 dagster_instance=instance,
                                                 dagster_run=result.dagster_run,
                                                 dagster_event=failure).for_run_failure()
        capture = Capture()
        ctx.log.addHandler(capture)
        report_run_failure(ctx)
    errors = [m for level, m in capture.lines if level == "ERROR"]
    assert len(errors) == 1, capture.lines
    report = errors[0]
    assert report.startswith(f"WikiGPT run {result.run_id} of job {result.dagster_run.job_name} failed at broken:")
    assert "cause: RuntimeError: no dump at /nowhere" in report
    assert f"Runs → {result.run_id}" in report and f"dagster debug export {result.run_id}" in report


def test_data_assets_carry_the_data_version_aware_condition():
    graph = build_definitions(load_settings("tiny")).resolve_asset_graph()
    expected = str(data_eager())
    for key in ("cleaned_articles", "deduped_corpus", "tokenizer", "token_shards"):
        assert str(graph.get(dg.AssetKey(key)).automation_condition) == expected


@pytest.mark.parametrize("condition, requested", [
    (dg.AutomationCondition.eager(), 1),  # counts any parent materialization as an update
    (data_eager(), 0),                     # ours: only a new parent DataVersion counts
])
def test_identical_parent_rerun_triggers_only_plain_eager(condition, requested):
    @dg.asset(name="parent", code_version="1")
    def parent():
        return dg.MaterializeResult(data_version=dg.DataVersion("same-bytes"))

    @dg.asset(name="child", deps=[parent], code_version="1", automation_condition=condition)
    def child():
        return dg.MaterializeResult(data_version=dg.DataVersion("child"))

    defs = dg.Definitions(assets=[parent, child])
    with dg.instance_for_test() as instance:
        assert dg.materialize([parent, child], instance=instance).success
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        assert dg.materialize([parent, child], instance=instance, selection=["parent"]).success
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.total_requested == requested

"""Build the Definitions for a given Settings (tests build their own with changed config)."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline.assets import build_assets
from wikigpt_pipeline.checks import build_checks
from wikigpt_pipeline.dump_source import build_dump_sensor, build_dump_source
from wikigpt_pipeline.jobs import eval_refresh_job, eval_refresh_schedule, pipeline_job
from wikigpt_pipeline.launchers import launcher_from_env
from wikigpt_pipeline.sensors import report_run_failure


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[build_dump_source(settings), *build_assets(settings)],
        asset_checks=build_checks(settings),
        jobs=[pipeline_job, eval_refresh_job],
        schedules=[eval_refresh_schedule()],
        sensors=[report_run_failure, build_dump_sensor(settings)],
        # Launched stages run where the launcher says: LocalLauncher (default) or
        # SkyPilotLauncher (WIKIGPT_LAUNCHER=skypilot); the Launchpad edits its fields per run.
        resources={"launcher": launcher_from_env()},
    )

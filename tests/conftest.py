"""Shared fixtures. The expensive one, `materialized`, runs the whole graph once per session on
the tiny profile and the embedded sample, in a temp WIKIGPT_HOME with a temp Dagster instance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from wikigpt_core.config import Settings, load_settings


@pytest.fixture(autouse=True, scope="session")
def _offline_env():
    # Tests never talk to W&B or the Hub; WIKIGPT_* from the caller's shell must not leak in.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("WIKIGPT_CONFIG", "WIKIGPT_DUMP", "HF_TOKEN", "HF_REPO_ID", "WANDB_API_KEY"):
            mp.delenv(var, raising=False)
        mp.setenv("WIKIGPT_PROFILE", "tiny")
        yield


@dataclass
class Materialized:
    home: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions
    settings: Settings
    result: dg.ExecuteInProcessResult

    def artifact(self, asset: str) -> Path:
        return self.home / self.settings.profile / asset


@pytest.fixture(scope="session")
def materialized(tmp_path_factory) -> Materialized:
    from wikigpt_pipeline.jobs import PIPELINE_JOB
    from wikigpt_pipeline.project import build_definitions

    from wikigpt_pipeline.instance import get_instance

    home = tmp_path_factory.mktemp("wikigpt_home")
    with pytest.MonkeyPatch.context() as mp:
        # A throwaway but on-disk instance, laid out like a user's DAGSTER_HOME, so the
        # `wikigpt` CLI run as a subprocess sees the same history and staleness.
        mp.setenv("WIKIGPT_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        instance = get_instance()
        settings = load_settings("tiny")
        defs = build_definitions(settings)
        result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(instance=instance)
        assert result.success
        yield Materialized(home, instance, defs, settings, result)
        instance.dispose()

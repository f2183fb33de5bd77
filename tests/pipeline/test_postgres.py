"""A team's instance: the documented deploy/dagster.postgres.yaml against a real PostgreSQL
server (Debian's, started on a loopback port), with the stale-only rerun story run on it."""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from tests.needs import require_module
from tests.pipeline.postgres_server import postgres_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY_YAML = REPO / "deploy" / "dagster.postgres.yaml"


@pytest.fixture(scope="module")
def postgres():
    require_module("dagster_postgres")
    with postgres_server() as pg:
        yield pg


@pytest.fixture()
def pg_instance(postgres, tmp_path, monkeypatch):
    """An instance loaded from the deploy example, its variables pointing at the test server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    for var, key in (("DAGSTER_PG_HOST", "host"), ("DAGSTER_PG_PORT", "port"),
                     ("DAGSTER_PG_USER", "user"), ("DAGSTER_PG_DB", "db")):
        monkeypatch.setenv(var, postgres[key])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")  # trust auth on the test server
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def test_deploy_yaml_gives_postgres_storage_and_the_run_queue(pg_instance):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.run_coordinator, QueuedRunCoordinator)
    settings = pg_instance.get_concurrency_config()
    assert settings.pool_config.default_pool_limit == 1
    assert settings.run_queue_config.max_concurrent_runs == 4


def test_stale_only_story_on_postgres(pg_instance, tmp_path):
    """The new-dump story (materialize; dump in progress: nothing; new dump: only what it
    changes executes) with every event and stale status read from PostgreSQL: one run per
    finished dump."""
    from tests.pipeline.test_dump_sensor import dump_story

    dump_story(pg_instance, tmp_path)
    runs = pg_instance.get_runs()
    assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

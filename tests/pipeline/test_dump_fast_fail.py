"""A dump site's 404 fails `wiki_dump` at once (one request, no retry); a 503 is retried. The
observation that names the run's dump (`identity_for_run`) runs under the same transient-only
rule as the stage itself, and `wikigpt run`'s console says what it is waiting for."""
from __future__ import annotations

import dataclasses
import logging

import dagster as dg
import pytest

from tests.core.data.dumpsite_server import DumpSite
from wikigpt_core.config import load_settings
from wikigpt_pipeline.jobs import PIPELINE_JOB
from wikigpt_pipeline.progress import PROGRESS

NOT_PUBLISHED = "enwiki/20991231"


@pytest.fixture()
def site():
    site = DumpSite()
    yield site
    site.close()


def _materialize_wiki_dump(monkeypatch, tmp_path, source: str, base_url: str) -> dg.ExecuteInProcessResult:
    from wikigpt_pipeline.project import build_definitions

    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    settings = load_settings("tiny")
    settings = dataclasses.replace(settings, dump=dataclasses.replace(settings.dump, source=source,
                                                                      base_url=base_url))
    defs = build_definitions(settings)
    assert defs.resolve_assets_def("wiki_dump").op.retry_policy is not None  # it has one to bypass
    with dg.instance_for_test() as instance:
        return defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("wiki_dump")], raise_on_error=False)


def _attempts(result: dg.ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events
               if e.event_type_value in ("STEP_START", "STEP_RESTARTED") and e.step_key == "wiki_dump")


def test_a_404_from_the_dump_site_fails_at_once(monkeypatch, tmp_path, site, caplog):
    with caplog.at_level(logging.INFO, logger=PROGRESS.name):
        result = _materialize_wiki_dump(monkeypatch, tmp_path, NOT_PUBLISHED, site.url)
    assert not result.success
    assert len(site.requests) == 1 and _attempts(result) == 1, site.requests
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "404" in str(failure.event_specific_data.error) and site.url in str(failure.event_specific_data.error)
    assert any(f"asking {site.url} for {NOT_PUBLISHED}" in r.getMessage() for r in caplog.records)


def test_a_503_from_the_dump_site_is_retried(monkeypatch, tmp_path, site):
    site.fail_next = [503]
    monkeypatch.setattr("wikigpt_pipeline.factory.NETWORK_RETRY", dg.RetryPolicy(max_retries=1, delay=0.1))
    result = _materialize_wiki_dump(monkeypatch, tmp_path, NOT_PUBLISHED, site.url)
    assert _attempts(result) == 2  # the 503 was retried; the retry then met the 404
    assert site.requests.count(site.requests[0]) == 2

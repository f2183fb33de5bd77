"""New dumps picked up by themselves, and a bad dump failing at once: the dump is an observable source, and the sensor observes
it against a real dump site on 127.0.0.1 (dumpstatus.json, sha1sums, the multistream file and
its index). Three scenarios, one story: (1) date A is finished, so the sensor materializes;
(2) date B appears but is in progress, so nothing is requested; (3) B finishes, so the sensor
refreshes and only what B changes executes (B differs from A in a redirect page only, which the
cleaning drops: cleaned_articles reruns with identical bytes, and deduped_corpus, whose input is
unchanged, is a cache hit that runs no stage code).

The story's graph is the project's own data assets (`stage_asset` from the registry) behind the
source; `dump_story` is shared with the Postgres-backed test. The retry tests use the data
stages' core functions behind hand-written assets, to set their own retry delays."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from unittest import mock
from pathlib import Path

import dagster as dg
import pytest

from tests.core.data.dumpsite_server import DumpSite
from wikigpt_core.config import load_settings
from wikigpt_core.data.builddump import split_dump, write_multistream
from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.dump import run_dump
from wikigpt_pipeline.dump_source import DUMP_SOURCE, build_dump_sensor, build_dump_source
from wikigpt_pipeline.staleness import not_fresh
from wikigpt_pipeline.retries import NETWORK_RETRY, retry_transient_only

A, B = "20990101", "20990120"
JOB = "dump_story_job"


def _dump_bytes(tmp: Path, date: str, edit_redirect: bool) -> tuple[bytes, bytes]:
    header, pages = split_dump()
    if edit_redirect:  # change one redirect page's wikitext; cleaning drops redirects
        i = next(k for k, p in enumerate(pages) if b"<redirect" in p)
        pages = pages[:i] + [pages[i].replace(b"</text>", b" [[Category:Edited redirect]]</text>", 1)] + pages[i + 1:]
    stem = tmp / f"enwiki-{date}-pages-articles-multistream"
    xml, index = stem.with_suffix(".xml.bz2"), Path(f"{stem}-index.txt.bz2")
    write_multistream(header, pages, xml, index, pages_per_stream=50)
    return xml.read_bytes(), index.read_bytes()


def story_definitions(settings, home: Path, retry: dg.RetryPolicy = NETWORK_RETRY) -> dg.Definitions:
    """wikipedia_dump (source) → wiki_dump → cleaned_articles → deduped_corpus."""
    out = lambda name: home / name  # noqa: E731

    def version(result) -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(result.content_hash),
                                    metadata={"rows": result.stats.get("rows", result.stats.get("pages"))})

    @dg.asset(deps=[DUMP_SOURCE], retry_policy=retry)
    def wiki_dump():
        with retry_transient_only("wiki_dump"):
            return version(run_dump(settings.dump, out("wiki_dump"), home / "_work" / "wiki_dump"))

    @dg.asset(deps=[wiki_dump])
    def cleaned_articles():
        return version(run_clean(settings.clean, out("wiki_dump"), out("cleaned_articles"),
                                 home / "_work" / "cleaned_articles"))

    @dg.asset(deps=[cleaned_articles])
    def deduped_corpus():
        return version(run_dedup(settings.dedup, out("cleaned_articles"), out("deduped_corpus")))

    return dg.Definitions(
        assets=[build_dump_source(settings), wiki_dump, cleaned_articles, deduped_corpus],
        jobs=[dg.define_asset_job(JOB, selection=dg.AssetSelection.all())],
        sensors=[build_dump_sensor(settings, job_name=JOB, minimum_interval_seconds=30)],
    )


def project_story_definitions(settings) -> dg.Definitions:
    """wikipedia_dump (source) → wiki_dump → cleaned_articles → deduped_corpus, as the project
    builds them (versioned outputs under $WIKIGPT_HOME, cache hits)."""
    from wikigpt_core.stages import STAGES
    from wikigpt_pipeline.factory import stage_asset

    names = ("wiki_dump", "cleaned_articles", "deduped_corpus")
    return dg.Definitions(
        assets=[build_dump_source(settings), *(stage_asset(settings, STAGES[n]) for n in names)],
        jobs=[dg.define_asset_job(JOB, selection=dg.AssetSelection.all())],
        sensors=[build_dump_sensor(settings, job_name=JOB, minimum_interval_seconds=30)],
    )


class Story:
    def __init__(self, instance: dg.DagsterInstance, site: DumpSite, defs: dg.Definitions):
        self.instance, self.site, self.defs = instance, site, defs
        self.sensor = defs.resolve_sensor_def("new_dump_sensor")
        self.cursor: str | None = None

    def tick(self) -> list[list[str]]:
        """One sensor evaluation, then its requested runs executed (as the daemon would); the
        assets each run executed (cache hits left out)."""
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        data = self.sensor.evaluate_tick(ctx)
        self.cursor = data.cursor
        ran = []
        for request in data.run_requests:
            keys = list(request.asset_selection)
            result = self.defs.resolve_job_def(JOB).execute_in_process(
                instance=self.instance, asset_selection=keys, tags=request.tags)
            assert result.success
            mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
            ran.append([m.asset_key.to_user_string() for m in mats if not m.metadata["cache_hit"].value])
        return ran

    def refresh(self, max_ticks: int = 6) -> list[list[str]]:
        """Ticks until one requests nothing; the runs of all ticks in order."""
        passes: list[list[str]] = []
        for _ in range(max_ticks):
            ran = self.tick()
            if not ran:
                return passes
            passes.extend(ran)
        raise AssertionError(f"still requesting runs after {max_ticks} ticks: {passes}")


def dump_story(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    site = DumpSite()
    home = tmp_path / "home"
    try:
        stack = contextlib.ExitStack()
        stack.enter_context(mock.patch.dict(os.environ, {"WIKIGPT_HOME": str(home)}))
        xml_a, index_a = _dump_bytes(tmp_path, A, edit_redirect=False)
        xml_b, index_b = _dump_bytes(tmp_path, B, edit_redirect=True)
        settings = load_settings("tiny")
        settings.dump = dataclasses.replace(settings.dump, source="enwiki/latest", base_url=site.url)
        settings.clean = dataclasses.replace(settings.clean, workers=1)
        settings.dedup = dataclasses.replace(settings.dedup, workers=1)
        site.publish("enwiki", A, xml_a, index_a, status="done")

        defs = project_story_definitions(settings)
        defs.resolve_asset_graph()
        dump_manifest = lambda: (home / "tiny" / "wiki_dump" / "current" / "manifest.json").read_text()  # noqa: E731
        assert site.requests == [], "loading the definitions must not touch the dump site"
        story = Story(instance, site, defs)

        # (1) A is finished: the sensor records the observation and materializes everything.
        assert story.refresh() == [["wiki_dump", "cleaned_articles", "deduped_corpus"]]
        observed = instance.get_latest_data_version_record(dg.AssetKey(DUMP_SOURCE), is_source=True)
        assert observed.asset_observation.tags["dagster/data_version"].startswith(f"enwiki/{A}:")
        assert "20990101" in dump_manifest()

        # (2) B appears but is still in progress: nothing is requested, nothing downloaded.
        site.publish("enwiki", B, xml_b, index_b, status="in-progress")
        site.requests.clear()
        assert story.refresh() == []
        assert not [r for r in site.requests if r.endswith(".bz2")]

        # (3) B finishes: one refresh run; wiki_dump and cleaned_articles (identical bytes)
        #     execute, and the cascade stops there: deduped_corpus's input is unchanged, so it
        #     is a cache hit and runs no stage code.
        site.set_status("enwiki", B, "done")
        assert story.refresh() == [["wiki_dump", "cleaned_articles"]]
        assert re.search(r'"dump_date": "20990120"', dump_manifest())
        assert story.refresh() == []  # settled
    finally:
        site.close()
        stack.close()


def test_dump_sensor_story(tmp_path):
    with dg.instance_for_test() as instance:
        dump_story(instance, tmp_path)


def test_sensor_is_off_by_default_and_waits_for_an_unreachable_site(tmp_path):
    settings = load_settings("tiny")
    settings.dump = dataclasses.replace(settings.dump, source="enwiki/latest", base_url="http://127.0.0.1:9")
    defs = story_definitions(settings, tmp_path)
    sensor = defs.resolve_sensor_def("new_dump_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with dg.instance_for_test() as instance:
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert data.run_requests == [] and "cannot observe" in (data.skip_message or "")
        assert instance.get_latest_data_version_record(dg.AssetKey(DUMP_SOURCE), is_source=True) is None


def _attempts(result: dg.ExecuteInProcessResult, step: str) -> int:
    """Attempts of a step: its first start plus each retry's restart."""
    return sum(1 for e in result.all_events
               if e.event_type_value in ("STEP_START", "STEP_RESTARTED") and e.step_key == step)


def _materialize_wiki_dump(settings, home: Path, retry: dg.RetryPolicy) -> dg.ExecuteInProcessResult:
    defs = story_definitions(settings, home, retry=retry)
    with dg.instance_for_test() as instance:
        return defs.resolve_job_def(JOB).execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("wiki_dump")], raise_on_error=False)


def test_truncated_dump_fails_in_one_attempt(tmp_path):
    """A bad local file fails at once, although wiki_dump carries a retry policy."""
    from wikigpt_core.data.sources import sample_path

    data = sample_path().read_bytes()
    bad = tmp_path / "enwiki-truncated-pages-articles.xml.bz2"
    bad.write_bytes(data[: len(data) * 6 // 10])
    settings = load_settings("tiny")
    settings.dump = dataclasses.replace(settings.dump, source=str(bad))
    result = _materialize_wiki_dump(settings, tmp_path / "home", NETWORK_RETRY)
    assert not result.success
    assert _attempts(result, "wiki_dump") == 1, "a deterministic error must not be retried"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "truncated bz2" in failure.message or "truncated" in str(failure.event_specific_data.error)


def test_transient_dump_site_error_is_retried(tmp_path):
    """A 503 from the dump site is transient: the same policy retries it, and the retry wins."""
    site = DumpSite()
    try:
        site.publish("enwiki", A, *_dump_bytes(tmp_path, A, edit_redirect=False))
        site.fail_next = [503]
        settings = load_settings("tiny")
        settings.dump = dataclasses.replace(settings.dump, source="enwiki/latest", base_url=site.url)
        result = _materialize_wiki_dump(settings, tmp_path / "home", dg.RetryPolicy(max_retries=2, delay=0.1))
    finally:
        site.close()
    assert result.success
    assert _attempts(result, "wiki_dump") == 2


# --- the project's own definitions -------------------------------------------------------------

def _project(monkeypatch, tmp_path, source: str, base_url: str = "https://dumps.wikimedia.org"):
    from wikigpt_pipeline.project import build_definitions

    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    settings = load_settings("tiny")
    settings.dump = dataclasses.replace(settings.dump, source=source, base_url=base_url)
    return settings, build_definitions(settings)


def _run(defs, instance, keys: list[str]) -> dg.ExecuteInProcessResult:
    from wikigpt_pipeline.jobs import PIPELINE_JOB

    return defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in keys], raise_on_error=False)


def test_project_wiki_dump_reads_the_observed_dump(monkeypatch, tmp_path):
    site = DumpSite()
    try:
        site.publish("enwiki", A, *_dump_bytes(tmp_path, A, edit_redirect=False))
        settings, defs = _project(monkeypatch, tmp_path, "enwiki/latest", site.url)
        graph = defs.resolve_asset_graph()
        assert graph.get(dg.AssetKey("wiki_dump")).parent_keys == {dg.AssetKey(DUMP_SOURCE)}
        assert site.requests == [], "loading the definitions must not touch the dump site"
        with dg.instance_for_test() as instance:
            assert _run(defs, instance, ["wiki_dump"]).success
            manifest = lambda: json.loads((tmp_path / "home" / "tiny" / "wiki_dump" / "current" / "manifest.json").read_text())  # noqa: E731
            first = manifest()
            assert first["stats"]["dump_date"] == A
            current = tmp_path / "home" / "tiny" / "wiki_dump" / "current"
            first_version = current.resolve().name
            assert dg.AssetKey("wiki_dump") not in not_fresh(instance, graph)

            # B finishes: the sensor's observation makes wiki_dump stale; its run fetches B
            # into a new version directory.
            site.publish("enwiki", B, *_dump_bytes(tmp_path, B, edit_redirect=True))
            data = defs.resolve_sensor_def("new_dump_sensor").evaluate_tick(
                dg.build_sensor_context(instance=instance, definitions=defs))
            requested = {k.to_user_string() for r in data.run_requests for k in r.asset_selection}
            assert "wiki_dump" in requested
            assert _run(defs, instance, ["wiki_dump"]).success
            second = manifest()
            assert second["stats"]["dump_date"] == B
            assert current.resolve().name != first_version  # a new dump, a new version
            assert dg.AssetKey("wiki_dump") not in not_fresh(instance, graph)
    finally:
        site.close()


def test_project_truncated_dump_fails_in_one_attempt(monkeypatch, tmp_path):
    """The project's wiki_dump has a retry policy for the network; a truncated local dump
    still fails in one attempt."""
    from wikigpt_core.data.sources import sample_path

    data = sample_path().read_bytes()
    bad = tmp_path / "enwiki-truncated-pages-articles.xml.bz2"
    bad.write_bytes(data[: len(data) * 6 // 10])
    settings, defs = _project(monkeypatch, tmp_path, str(bad))
    assert defs.resolve_assets_def("wiki_dump").op.retry_policy is not None
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, ["wiki_dump"])
    assert not result.success
    assert _attempts(result, "wiki_dump") == 1

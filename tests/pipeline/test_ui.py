"""The real Dagster webserver and UI: stale status over GraphQL, and a browser session that
finds the twelve assets and materializes one from the UI."""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.pipeline.servers import CHROMIUM, CHROMIUM_ARGS, REPO, dagster_process, graphql, stale_status
from tests.pipeline.test_definitions import EXPECTED_DEPS


@pytest.mark.slow
def test_graphql_reports_stale_status(materialized, tmp_path):
    """The webserver reads the same instance: with a changed cleaning threshold, GraphQL says
    cleaned_articles is STALE for its code version and every other asset is FRESH."""
    override = tmp_path / "override.toml"
    override.write_text(f"[clean]\nmin_chars = {materialized.settings.clean.min_chars + 123}\n")
    env = {"WIKIGPT_HOME": str(materialized.home), "DAGSTER_HOME": os.environ["DAGSTER_HOME"],
           "WIKIGPT_CONFIG": str(override)}
    with dagster_process("webserver", env, tmp_path / "webserver.log") as url:
        status = stale_status(url)
    status.pop("wikipedia_dump", None)  # the observed dump source: not materialized, no staleness
    assert set(status) == set(EXPECTED_DEPS)
    assert status["cleaned_articles"][0] == "STALE"
    assert status["cleaned_articles"][1][0]["category"] == "CODE"
    assert {k for k, (s, _) in status.items() if s != "FRESH"} == {"cleaned_articles"}


RUNS_QUERY = """
{ runsOrError(filter: {statuses: [SUCCESS, FAILURE, CANCELED]}) { ... on Runs { results { runId status assetSelection { path } } } } }
"""


@pytest.mark.browser
@pytest.mark.requires_tool("chromium")  # skips locally without it, fails in CI
def test_browser_sees_twelve_assets_and_materializes_one(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    env = {"WIKIGPT_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "WIKIGPT_PROFILE": "tiny"}
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").symlink_to(REPO / "dagster.yaml")  # as `wikigpt ui` does
    with dagster_process("dev", env, tmp_path / "dagster-dev.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # 1. The asset graph (wiki_dump's downstream lineage, the whole pipeline, one node per
        #    asset; the global view collapses groups) shows all twelve assets.
        page.goto(f"{url}/assets/wiki_dump?view=lineage&lineageScope=downstream&lineageDepth=12",
                  wait_until="networkidle")
        _dismiss_dialogs(page)
        for name in EXPECTED_DEPS:
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "asset-graph.png"))
        # 2. Materialize wiki_dump from the UI.
        page.locator("button", has_text=re.compile(r"^\s*Materialize\s*$")).first.click()
        # 3. The run it launched succeeds.
        deadline = time.time() + 240
        runs = []
        while time.time() < deadline:
            runs = graphql(url, RUNS_QUERY)["runsOrError"]["results"]
            if runs:
                break
            time.sleep(2)
        assert runs, "no run finished within 240 s"
        assert runs[0]["status"] == "SUCCESS", runs
        assert runs[0]["assetSelection"] == [{"path": ["wiki_dump"]}]
        # 4. The run's page in the UI says so.
        page.goto(f"{url}/runs/{runs[0]['runId']}", wait_until="networkidle")
        page.screenshot(path=str(tmp_path / "run.png"))
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=60_000)
        browser.close()


def _dismiss_dialogs(page) -> None:
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()

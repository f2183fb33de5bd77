"""The training charts as the Dagster UI shows them: a checkpoint's materialization carries its
loss curve (and DPO's reward chart) as markdown with inlined PNGs; in the real webserver and a
real browser, the asset page's markdown entry opens and both images decode at full size."""
from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import pytest

from tests.pipeline.servers import CHROMIUM, CHROMIUM_ARGS, REPO, dagster_process
from wikigpt_core.eval.charts import DPI, SIZE
from wikigpt_pipeline import previews


def _dpo_log(path: Path) -> None:
    rows = [{"step": s, "loss/train": 0.69 * math.exp(-s / 20), "dpo/margin": s / 10,
             "dpo/reward_accuracy": min(1.0, 0.5 + s / 80)} for s in range(1, 41, 5)]
    rows += [{"step": 40, "sample": "There was no 1850 World Cup."}]
    (path / "run").mkdir(parents=True)
    (path / "run" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.browser
@pytest.mark.requires_tool("chromium")  # skips locally without it, fails in CI
def test_asset_page_shows_the_training_charts(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    home, dagster_home = tmp_path / "home", tmp_path / "dagster"
    checkpoint = home / "tiny" / "dpo_checkpoint" / "v1"
    _dpo_log(checkpoint)
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").symlink_to(REPO / "dagster.yaml")
    metadata = {"path": dg.MetadataValue.path(str(checkpoint)), **previews.training(checkpoint)}
    assert metadata["loss_curve"].value.count("](data:image/png;base64,") == 2
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("dpo_checkpoint", metadata=metadata))

    env = {"WIKIGPT_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "WIKIGPT_PROFILE": "tiny"}
    with dagster_process("webserver", env, tmp_path / "webserver.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{url}/assets/dpo_checkpoint", wait_until="networkidle")
        row = page.locator("tr", has_text="loss_curve")
        expect(row).to_be_visible(timeout=60_000)
        row.get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        images = dialog.locator("img")
        expect(images).to_have_count(2, timeout=30_000)
        page.screenshot(path=str(tmp_path / "charts.png"))
        sizes = [images.nth(i).evaluate("e => e.complete ? [e.naturalWidth, e.naturalHeight] : null")
                 for i in range(2)]
        alts = [images.nth(i).get_attribute("alt") for i in range(2)]
        browser.close()
    expected = [round(SIZE[0] * DPI), round(SIZE[1] * DPI)]
    assert sizes == [expected, expected]  # decoded, not a broken-image placeholder
    assert alts == ["DPO loss curve", "DPO reward margin and accuracy"]

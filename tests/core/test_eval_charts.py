"""The eval report's charts: real PNGs, deterministic bytes, drawn from real training-log rows,
and report.md / report.html that show them (the page inlines every image)."""
from __future__ import annotations

import base64
import io
import re
import struct

import pytest
from matplotlib.image import imread

from wikigpt_core.eval.charts import (CHART_CAPTIONS, CHART_DIR, DPI, SIZE, dpo_rewards_png, loss_curve_png,
                                      perplexity_png, read_log, report_charts, series, win_tie_loss_png)
from wikigpt_core.eval.report import render_html, render_markdown, tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _log(n: int = 30, val_every: int = 10, dpo: bool = False) -> list[dict]:
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "loss/train": 6.0 - 0.1 * step, "lr": 1e-3, "tps": 500.0 + step}
        if dpo:
            row.update({"dpo/margin": 0.05 * step, "dpo/reward_accuracy": min(1.0, 0.5 + 0.02 * step)})
        rows.append(row)
        if step % val_every == 0:
            rows.append({"step": step, "loss/val": 6.1 - 0.09 * step, "ppl/val": 400.0})
    rows.append({"step": n, "sample": "The history of Wikipedia"})
    return rows


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png.startswith(PNG_SIGNATURE)
    out, i = [], len(PNG_SIGNATURE)
    while i < len(png):
        (length,) = struct.unpack(">I", png[i:i + 4])
        out.append((png[i + 4:i + 8], png[i + 8:i + 8 + length]))
        i += 12 + length
    return out


REPORT = {
    "perplexity": {"base": 394.2, "sft": 431.0, "dpo": 455.5},
    "pairwise": {"sft_vs_base": {"win": 0.6, "tie": 0.3, "loss": 0.1, "n": 10},
                 "dpo_vs_sft": {"win": 0.25, "tie": 0.5, "loss": 0.25, "n": 8}},
    "harness": {c: {"exact_match": 0.0, "contains_answer": 0.1, "stopped": 1.0, "length_ok": 1.0,
                    "distinct3": 1.0} for c in ("base", "sft", "dpo")},
    "gallery": [{"id": 1, "type": "grounded_qa", "prompt": "Who won the 1850 FIFA World Cup?",
                 "base": "a", "sft": "b", "dpo": "c"}],
}


def test_charts_are_pngs_of_the_declared_size_with_no_software_or_date_chunk():
    png = loss_curve_png(_log(), "Pretraining: train and val loss")
    image = imread(io.BytesIO(png))
    assert image.shape[:2] == (round(SIZE[1] * DPI), round(SIZE[0] * DPI))
    kinds = {kind for kind, _ in _chunks(png)}
    assert {b"IHDR", b"IDAT", b"IEND"} <= kinds and b"tIME" not in kinds
    text = b"".join(data for kind, data in _chunks(png) if kind in (b"tEXt", b"iTXt", b"zTXt"))
    assert b"Software" not in text and b"matplotlib" not in text.lower()


def test_identical_inputs_give_identical_bytes_and_new_data_new_bytes():
    log = _log()
    assert loss_curve_png(log, "t") == loss_curve_png([dict(r) for r in log], "t")
    assert loss_curve_png(log, "t") != loss_curve_png(_log(n=31), "t")
    assert perplexity_png(REPORT["perplexity"]) == perplexity_png(dict(REPORT["perplexity"]))
    assert perplexity_png(REPORT["perplexity"]) != perplexity_png({**REPORT["perplexity"], "dpo": 900.0})


def test_series_keeps_finite_values_of_one_metric_in_order():
    rows = [{"step": 1, "loss/train": 5.0}, {"step": 2, "loss/train": float("nan")},
            {"step": 2, "loss/val": 4.0}, {"step": 3, "loss/train": True}, {"step": 4, "loss/train": 3}]
    assert series(rows, "loss/train") == ([1, 4], [5.0, 3.0])
    assert series(rows, "loss/val") == ([2], [4.0])
    assert series(rows, "dpo/margin") == ([], [])


def test_read_log_reads_jsonl_and_a_missing_log_is_empty(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss/train": 2.5}\n\n{"step": 2, "loss/val": 2.0}\n')
    assert read_log(path) == [{"step": 1, "loss/train": 2.5}, {"step": 2, "loss/val": 2.0}]
    assert read_log(tmp_path / "absent.jsonl") == []


def test_missing_curves_still_draw_a_chart_that_says_so():
    empty = loss_curve_png([], "SFT: train and val loss")
    assert imread(io.BytesIO(empty)).shape[:2] == (round(SIZE[1] * DPI), round(SIZE[0] * DPI))
    assert empty != loss_curve_png(_log(), "SFT: train and val loss")
    assert dpo_rewards_png([]) != dpo_rewards_png(_log(dpo=True))


def test_report_charts_cover_every_stage_and_comparison():
    logs = {"base": _log(), "sft": _log(n=12, val_every=6), "dpo": _log(n=8, dpo=True)}
    charts = report_charts(REPORT, logs, judge="rule system, not a model")
    assert list(charts) == list(CHART_CAPTIONS)
    assert len(set(charts.values())) == len(charts)  # six different pictures
    assert win_tie_loss_png(REPORT["pairwise"], "x") != win_tie_loss_png(
        {**REPORT["pairwise"], "dpo_vs_sft": {"win": 0.9, "tie": 0.1, "loss": 0.0, "n": 8}}, "x")


def test_markdown_links_the_charts_and_html_inlines_them():
    logs = {"base": _log(), "sft": _log(), "dpo": _log(dpo=True)}
    charts = report_charts(REPORT, logs, judge="rule system, not a model")
    paths = {f"{CHART_DIR}/{n}": CHART_CAPTIONS[n] for n in charts}
    tabs = {k: v for k, v in tables(REPORT, []).items() if k != "cost"}
    md = render_markdown(REPORT, tabs, {"judge": "offline:rules"}, charts=paths,
                         benchmarks="\n## Standard benchmarks\n\nNot run.\n")
    for path, caption in paths.items():
        assert f"![{caption}]({path})" in md
    assert md.index("## Charts") < md.index("## Perplexity") < md.index("## Standard benchmarks") < md.index("## Gallery")

    page = render_html(md, {f"{CHART_DIR}/{n}": b for n, b in charts.items()})
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h2>Charts</h2>" in page
    assert f'src="{CHART_DIR}/' not in page and "http" not in page.split("<body>")[1]
    inlined = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(b) for b in inlined) == sorted(charts.values())


@pytest.mark.parametrize("text", ["<script>alert(1)</script>", "a < b & c"])
def test_html_escapes_report_text(text):
    page = render_html(f"# Report\n\n{text}\n", {})
    assert "<script>" not in page and "&lt;" in page

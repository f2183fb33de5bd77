"""PNG charts for the eval report and the training assets' pages.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, no
display). The bytes are deterministic for identical inputs: PNG metadata carries no Software
or date entry, and the report's content hash (its version) depends on them."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CHART_DIR = "charts"
DPI = 80
SIZE = (6.4, 3.6)  # inches: 512 x 288 px at DPI, small enough to inline as base64
PNG_METADATA = {"Software": None}  # matplotlib writes its version otherwise
CHECKPOINT_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "dpo": "#d62728"}
STAGE_TITLES = {"base": "Pretraining", "sft": "SFT", "dpo": "DPO"}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a training log (log.jsonl); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, finite values only, in log order."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def _figure() -> Figure:
    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def loss_curve_png(rows: list[dict[str, Any]], title: str) -> bytes:
    """Train loss (line) and val loss (markers) against the optimizer step."""
    fig = _figure()
    ax = fig.add_subplot()
    train = series(rows, "loss/train")
    val = series(rows, "loss/val")
    if not train[0] and not val[0]:
        _empty(ax, "no losses logged")
    if train[0]:
        ax.plot(*train, color="#1f77b4", label="train loss")
    if val[0]:
        ax.plot(*val, color="#ff7f0e", marker="o", label="val loss")
    elif train[0]:
        ax.plot([], [], " ", label="(no val split logged)")
    if train[0] or val[0]:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def dpo_rewards_png(rows: list[dict[str, Any]]) -> bytes:
    """DPO implicit-reward margin (left axis) and reward accuracy (right axis) per logged step."""
    fig = _figure()
    ax = fig.add_subplot()
    margin = series(rows, "dpo/margin")
    acc = series(rows, "dpo/reward_accuracy")
    if not margin[0] and not acc[0]:
        _empty(ax, "no DPO rewards logged")
    else:
        ax.plot(*margin, color="#2ca02c", label="reward margin (chosen − rejected)")
        ax.axhline(0.0, color="#999999", lw=0.8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("margin", color="#2ca02c")
        ax.grid(alpha=0.3)
        right = ax.twinx()
        right.plot(*acc, color="#9467bd", ls="--", label="reward accuracy")
        right.set_ylim(-0.02, 1.02)
        right.set_ylabel("accuracy", color="#9467bd")
        lines = ax.get_lines()[:1] + right.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    ax.set_title("DPO reward margin and accuracy (train batches)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def perplexity_png(ppl: dict[str, float]) -> bytes:
    """One bar per checkpoint: perplexity on the held-out Wikipedia shard."""
    fig = _figure()
    ax = fig.add_subplot()
    names = list(ppl)
    values = [ppl[n] for n in names]
    bars = ax.bar(names, values, color=[CHECKPOINT_COLORS.get(n, "#8c564b") for n in names])
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_ylim(0, max(values) * 1.15 if values else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Perplexity per checkpoint (held-out Wikipedia shard)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def win_tie_loss_png(pairwise: dict[str, dict[str, float]], judge: str) -> bytes:
    """Stacked horizontal bars: win / tie / loss share of each pairing."""
    fig = _figure()
    ax = fig.add_subplot()
    names = list(pairwise)
    left = [0.0] * len(names)
    for part, color in (("win", "#2ca02c"), ("tie", "#bbbbbb"), ("loss", "#d62728")):
        widths = [float(pairwise[n][part]) for n in names]
        bars = ax.barh(names, widths, left=left, color=color, label=part)
        ax.bar_label(bars, labels=[f"{w:.0%}" if w >= 0.06 else "" for w in widths],
                     label_type="center", fontsize=8)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of prompts")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Pairwise judge: win / tie / loss (judge: {judge})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def report_charts(report: dict[str, Any], logs: dict[str, list[dict[str, Any]]],
                  judge: str) -> dict[str, bytes]:
    """{file name: PNG bytes} for the eval report, in display order. `logs` maps checkpoint
    name (base / sft / dpo) to its training-log rows."""
    charts = {f"loss_{c}.png": loss_curve_png(rows, f"{STAGE_TITLES.get(c, c)}: train and val loss")
              for c, rows in logs.items()}
    charts["dpo_rewards.png"] = dpo_rewards_png(logs.get("dpo", []))
    charts["perplexity.png"] = perplexity_png(report["perplexity"])
    charts["win_tie_loss.png"] = win_tie_loss_png(report["pairwise"], judge)
    return charts


CHART_CAPTIONS = {
    "loss_base.png": "Pretraining loss",
    "loss_sft.png": "SFT loss",
    "loss_dpo.png": "DPO loss",
    "dpo_rewards.png": "DPO reward margin and accuracy",
    "perplexity.png": "Perplexity per checkpoint",
    "win_tie_loss.png": "Pairwise win / tie / loss",
}

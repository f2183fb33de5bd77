"""report.json (a fixed schema: perplexity, pairwise, harness, gallery), report.md and the
metadata tables."""
from __future__ import annotations

from typing import Any

from wikigpt_core.checkpoints import CHECKPOINTS
from wikigpt_core.eval.harness import METRICS

PAIRINGS = ("sft_vs_base", "dpo_vs_sft")
COST_FIELDS = ("seconds", "gpu_hours", "cost_usd")


def build_report(ppl: dict[str, float], pairwise: dict[str, dict], harness: dict[str, dict],
                 gallery: list[dict]) -> dict[str, Any]:
    """Exactly {perplexity, pairwise, harness, gallery}; nothing else goes into report.json."""
    return {
        "perplexity": {c: float(ppl[c]) for c in CHECKPOINTS},
        "pairwise": {p: {"win": float(pairwise[p]["win"]), "tie": float(pairwise[p]["tie"]),
                         "loss": float(pairwise[p]["loss"]), "n": int(pairwise[p]["n"])} for p in PAIRINGS},
        "harness": {c: {m: float(harness[c][m]) for m in METRICS} for c in CHECKPOINTS},
        "gallery": [{"id": int(g["id"]), "type": str(g["type"]), "prompt": str(g["prompt"]),
                     **{c: str(g[c]) for c in CHECKPOINTS}} for g in gallery],
    }


def cost_rows(upstream: dict[str, dict] | None) -> list[dict[str, Any]]:
    """One row per upstream asset with its seconds / gpu_hours / cost_usd when it reported them."""
    rows = []
    for asset, stats in (upstream or {}).items():
        stats = stats or {}
        row = {"asset": asset}
        for f in COST_FIELDS:
            v = stats.get(f)
            row[f] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        rows.append(row)
    return rows


def tables(report: dict[str, Any], costs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    base = report["perplexity"]["base"]
    return {
        "perplexity": [{"checkpoint": c, "ppl": round(p, 4), "delta_vs_base_pct": round(100 * (p / base - 1), 2)}
                       for c, p in report["perplexity"].items()],
        "pairwise": [{"pairing": k, **v} for k, v in report["pairwise"].items()],
        "harness": [{"checkpoint": c, **v} for c, v in report["harness"].items()],
        "cost": costs,
    }


def flat_stats(report: dict[str, Any]) -> dict[str, float | int]:
    s: dict[str, float | int] = {}
    base = report["perplexity"]["base"]
    for c, p in report["perplexity"].items():
        s[f"ppl_{c}"] = round(p, 4)
        if c != "base":
            s[f"ppl_delta_{c}_pct"] = round(100 * (p / base - 1), 2)
    for k, v in report["pairwise"].items():
        for f in ("win", "tie", "loss", "n"):
            s[f"{k}_{f}"] = v[f]
    for c, metrics in report["harness"].items():
        for m, v in metrics.items():
            s[f"harness_{c}_{m}"] = v
    s["gallery_prompts"] = len(report["gallery"])
    return s


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of flat rows."""
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    text = text if text.strip() else "(empty)"
    return "\n".join("> " + line for line in text.splitlines()) or "> (empty)"


def render_markdown(report: dict[str, Any], tabs: dict[str, list[dict[str, Any]]], notes: dict[str, Any],
                    gallery_stopped: dict[tuple[int, str], bool] | None = None, *,
                    charts: dict[str, str] | None = None, benchmarks: str = "") -> str:
    """The human-readable report. `gallery_stopped[(id, checkpoint)]` marks replies that never
    emitted <|end|> (the text itself stays verbatim). `charts` maps a PNG's path relative to the
    report to its caption; `benchmarks` is the standard-benchmark section (markdown)."""
    gallery_stopped = gallery_stopped or {}
    judge_note = f"The pairwise verdicts come from {notes['judge_who']}." if notes.get("judge_who") else ""
    if notes.get("judge_is_rules"):
        judge_note += (" No model judged these pairs: a rule system scored every response by fixed "
                       "rules (grounding, agreement with the reference, stopping, length, repetition).")
    parts = ["# WikiGPT evaluation report\n",
             f"Judge: `{notes.get('judge', '?')}`. {judge_note}\n\nHeld-out examples: {notes.get('heldout', '?')}; "
             f"harness on {notes.get('harness_n', '?')} closed-QA prompts, pairwise on "
             f"{notes.get('pairwise_n', '?')} prompts. Their replies are decoded with temperature "
             f"{notes.get('harness_temperature', '?')}, up to {notes.get('max_new_tokens', '?')} new tokens.\n",
             _charts_section(charts or {}),
             "## Perplexity (held-out Wikipedia shard)\n", render_table(tabs["perplexity"]),
             "\n## Pairwise judge (position-debiased: each pair judged in both orders; disagreement counts as a tie)\n",
             render_table(tabs["pairwise"]),
             "\n## Judge-free harness (held-out closed QA)\n", render_table(tabs["harness"]),
             benchmarks,
             "\n## Cost and time\n",
             # Timings differ on every run; they live in the run record, outside the version.
             render_table(tabs["cost"]) if "cost" in tabs else "See `run/costs.md` (the run record).\n",
             "\n## Gallery (temperature 0.7, top-p 0.9; verbatim, failures included)\n"]
    for g in report["gallery"]:
        parts.append(f"### {g['id']}. {g['type']}\n\n**Prompt**\n\n{_quote(g['prompt'])}\n")
        for c in CHECKPOINTS:
            cut = "" if gallery_stopped.get((g["id"], c), True) else " _(no <|end|>: cut off at the token limit)_"
            parts.append(f"**{c}**{cut}\n\n{_quote(g[c])}\n")
    return "\n".join(parts)


def _charts_section(charts: dict[str, str]) -> str:
    if not charts:
        return ""
    return "## Charts\n\n" + "\n\n".join(f"![{cap}]({path})" for path, cap in charts.items()) + "\n"


HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
              "line-height:1.45;color:#222}table{border-collapse:collapse;margin:.5rem 0}"
              "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}"
              "blockquote{margin:.3rem 0;padding:.2rem .8rem;border-left:3px solid #ccc;color:#444}"
              "img{max-width:100%;margin:.3rem .3rem 0 0;border:1px solid #eee}")


def render_html(markdown_text: str, images: dict[str, bytes], title: str = "WikiGPT evaluation report") -> str:
    """One self-contained page: the report's markdown rendered to HTML, every image referenced by
    a path in `images` inlined as a base64 data URI (no file beside it is needed)."""
    import base64
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    for path, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        body = body.replace(f'src="{html.escape(path)}"', f'src="{uri}"')
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n"
            f"<body>\n{body}</body></html>\n")

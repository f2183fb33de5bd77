"""Markdown previews read from an artifact, so the asset page shows what was made: sample
articles, chat examples, preference pairs, generations during training, the eval report and
the model card."""
from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path
from typing import Callable

import dagster as dg
import pyarrow.parquet as pq

MAX_CHARS = 20_000
Preview = Callable[[Path], dict[str, dg.MetadataValue]]


def _md(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "\n\n…")


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return "> " + (text if len(text) <= limit else text[:limit] + "…")


def _jsonl(path: Path, n: int) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in islice(f, n)]


def articles(path: Path) -> dict[str, dg.MetadataValue]:
    """The first rows of the artifact's parquet file (articles or corpus)."""
    (parquet,) = sorted(path.glob("*.parquet"))
    rows = next(pq.ParquetFile(parquet).iter_batches(batch_size=3)).to_pylist()
    body = "\n\n".join(f"**[{r['title']}]({r['url']})**\n\n{_quote(r['text'])}" for r in rows)
    return {"preview": _md(body)}


def chat_examples(path: Path) -> dict[str, dg.MetadataValue]:
    parts = []
    for ex in _jsonl(path / "train.jsonl", 3):
        turns = "\n\n".join(f"**{m['role']}**:\n{_quote(m['content'])}" for m in ex["messages"])
        parts.append(f"*{ex.get('task', 'example')}*\n\n{turns}")
    return {"preview": _md("\n\n---\n\n".join(parts))}


def preference_pairs(path: Path) -> dict[str, dg.MetadataValue]:
    parts = []
    for pair in _jsonl(path / "pairs.jsonl", 3):
        prompt = pair["prompt"][-1]["content"] if isinstance(pair["prompt"], list) else pair["prompt"]
        parts.append(f"*{pair.get('kind', 'pair')}* — {_quote(prompt, 200)}\n\n"
                     f"**chosen**:\n{_quote(pair['chosen'])}\n\n**rejected**:\n{_quote(pair['rejected'])}")
    return {"preview": _md("\n\n---\n\n".join(parts))}


def training_samples(path: Path) -> dict[str, dg.MetadataValue]:
    from wikigpt_core.train.stage import training_log

    log = training_log(path)
    if not log.exists():
        return {}
    samples = [r for r in map(json.loads, log.read_text().splitlines()) if "sample" in r]
    if not samples:
        return {}
    body = "\n\n".join(f"**step {r['step']}**\n\n{_quote(r['sample'], 600)}" for r in samples[-3:])
    return {"samples": _md(body)}


LOSS_TITLES = {"base_checkpoint": "Pretraining", "sft_checkpoint": "SFT", "dpo_checkpoint": "DPO"}


def loss_curve(path: Path) -> dict[str, dg.MetadataValue]:
    """The checkpoint's train/val loss curve as a markdown image (a base64 PNG inlined, so the
    asset page shows it with no file server); for DPO, the reward margin and accuracy too."""
    from wikigpt_core.eval.charts import dpo_rewards_png, loss_curve_png, read_log
    from wikigpt_core.train.stage import training_log

    rows = read_log(training_log(path))
    if not rows:
        return {}
    stage = LOSS_TITLES.get(Path(path).parent.name, "") or LOSS_TITLES.get(Path(path).name, "Training")
    body = _png_md(loss_curve_png(rows, f"{stage}: train and val loss"), f"{stage} loss curve")
    if any("dpo/margin" in r for r in rows):
        body += "\n\n" + _png_md(dpo_rewards_png(rows), "DPO reward margin and accuracy")
    return {"loss_curve": dg.MetadataValue.md(body)}


def _png_md(png: bytes, alt: str) -> str:
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def eval_report(path: Path) -> dict[str, dg.MetadataValue]:
    from wikigpt_core.eval.charts import CHART_CAPTIONS, CHART_DIR

    # report.md links its charts by relative path; the asset page gets them inlined instead.
    text = re.sub(r"!\[[^\]]*\]\(" + CHART_DIR + r"/[^)]*\)\s*", "", (path / "report.md").read_text())
    out = {"report": _md(text.replace("## Charts\n", "## Charts\n\nShown in the `charts` entry.\n", 1))}
    pngs = [(cap, path / CHART_DIR / name) for name, cap in CHART_CAPTIONS.items()]
    charts = [_png_md(f.read_bytes(), cap) for cap, f in pngs if f.is_file()]
    if charts:
        out["charts"] = dg.MetadataValue.md("\n\n".join(charts))
    gallery = json.loads((path / "report.json").read_text()).get("gallery", [])
    if gallery:
        out["gallery_excerpt"] = _md("\n\n---\n\n".join(
            f"**{g['type']}**: {g['prompt']}\n\n" + "\n\n".join(
                f"*{c}*: {_quote(g[c], 300)}" for c in ("base", "sft", "dpo") if c in g)
            for g in gallery[:4]))
    return out


def model_card(path: Path) -> dict[str, dg.MetadataValue]:
    return {"model_card": _md((path / "README.md").read_text())}


def training(path: Path) -> dict[str, dg.MetadataValue]:
    """A checkpoint's page: its loss curve (and DPO's reward chart) and its sample generations."""
    return {**loss_curve(path), **training_samples(path)}


def gguf_files(path: Path) -> dict[str, dg.MetadataValue]:
    """The GGUF release's page: its measured table (run record) and its Modelfile."""
    return {"quantization": _md((path / "run" / "quantization.md").read_text()),
            "modelfile": _md("```\n" + (path / "Modelfile").read_text() + "```")}

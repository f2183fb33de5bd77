"""Markdown previews read from an artifact, so the asset page shows what was made: sample
articles, chat examples, preference pairs, generations during training, the eval report and
the model card."""
from __future__ import annotations

import json
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


def eval_report(path: Path) -> dict[str, dg.MetadataValue]:
    out = {"report": _md((path / "report.md").read_text())}
    gallery = json.loads((path / "report.json").read_text()).get("gallery", [])
    if gallery:
        out["gallery_excerpt"] = _md("\n\n---\n\n".join(
            f"**{g['type']}**: {g['prompt']}\n\n" + "\n\n".join(
                f"*{c}*: {_quote(g[c], 300)}" for c in ("base", "sft", "dpo") if c in g)
            for g in gallery[:4]))
    return out


def model_card(path: Path) -> dict[str, dg.MetadataValue]:
    return {"model_card": _md((path / "README.md").read_text())}

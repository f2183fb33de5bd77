"""Resumable extraction parts: pages → filtered articles → `part-NNNNNN.parquet` + stats.

A part is finished when its `.json` stats file exists (written, atomically, after the parquet
file). A killed run leaves finished parts behind; the next run skips them.
This module is what worker processes import, so it stays free of torch/config imports.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq

from wikigpt_core.data.extract import article_facts, extract_article, skip_reason
from wikigpt_core.data.filters import drop_reason, wikitext_drop_reason
from wikigpt_core.data.multistream import StreamTask, read_stream_pages
from wikigpt_core.data.parquet_io import COMPRESSION, articles_table
from wikigpt_core.data.xmlpages import RawPage


def part_paths(parts_dir: Path, part: int) -> tuple[Path, Path]:
    stem = Path(parts_dir) / f"part-{part:06d}"
    return stem.with_suffix(".parquet"), stem.with_suffix(".json")


def is_finished(parts_dir: Path, part: int) -> bool:
    return part_paths(parts_dir, part)[1].exists()


def read_part_stats(parts_dir: Path, part: int) -> dict[str, Any]:
    return json.loads(part_paths(parts_dir, part)[1].read_text())


def clean_pages(pages: list[RawPage], part: int, parts_dir: str, filters: dict[str, Any]) -> dict[str, Any]:
    """Extract and filter pages, write the kept articles as one part, return its stats."""
    cfg = SimpleNamespace(**filters)
    counts: Counter[str] = Counter()
    drop_examples: dict[str, str] = {}
    rows = []
    wikitext_bytes = 0
    for page in pages:
        wikitext_bytes += len(page.text.encode("utf-8"))
        reason = skip_reason(page, cfg.language)
        if reason is None:
            facts = article_facts(page, cfg.language, cfg.url_base)
            reason = wikitext_drop_reason(facts, cfg)
        if reason is None:
            article = extract_article(page, facts)
            reason = drop_reason(article, cfg)
            if reason is None:
                rows.append((article.id, article.title, article.url, article.text))
                continue
        counts[reason] += 1
        drop_examples.setdefault(reason, page.title)
    stats = {
        "part": part,
        "pages_seen": len(pages),
        "rows": len(rows),
        "counts": dict(counts),
        "drop_examples": drop_examples,
        "wikitext_bytes": wikitext_bytes,
    }
    parquet, marker = part_paths(Path(parts_dir), part)
    tmp = parquet.with_name(parquet.name + ".tmp")
    pq.write_table(articles_table(rows), tmp, compression=COMPRESSION)
    os.replace(tmp, parquet)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, marker)
    return stats


def clean_streams(xml: str, task: StreamTask, parts_dir: str, filters: dict[str, Any]) -> dict[str, Any]:
    """Worker entry for multistream dumps: decompress this task's streams, then clean_pages."""
    pages: list[RawPage] = []
    for stream in task.streams:
        pages.extend(read_stream_pages(Path(xml), stream))
    return clean_pages(pages, task.part, parts_dir, filters)

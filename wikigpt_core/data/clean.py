"""`cleaned_articles`: dump → extracted, filtered articles in `articles.parquet`.

Multistream dumps (with an index) are cleaned in parallel, one worker per core, each worker
decompressing its own run of bz2 streams. A single-stream bz2 (the sample) is decompressed
and parsed sequentially in this process while workers extract and filter blocks of pages.
Either way the work is cut into parts under `work/`; finished parts survive a killed run and
are reused, then merged into bounded row groups. Filters: see `wikigpt_core.data.filters`.

The target language is `CleanConfig.language`, else the dump's own (its <siteinfo> dbname,
`xml:lang`, or `<lang>wiki-` file name); it is written into the artifact as `language.txt`
(hashed), and article URLs use the wiki's own address from <siteinfo><base>.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikigpt_core.artifacts import ArtifactWriter, StageResult, manifest_hash
from wikigpt_core.data import parts
from wikigpt_core.data.errors import NothingKeptError
from wikigpt_core.data.filters import ALL_REASONS
from wikigpt_core.data.language import (
    check_supported,
    language_from_filename,
    resolve_language,
    wiki_language,
    write_language,
)
from wikigpt_core.data.multistream import check_multistream_header, iter_tasks
from wikigpt_core.data.parquet_io import RowGroupWriter, iter_batches
from wikigpt_core.data.pool import bounded_map, resolve_workers
from wikigpt_core.data.sources import DumpFiles, find_dump_files
from wikigpt_core.data.xmlpages import iter_pages, read_siteinfo

if TYPE_CHECKING:
    from wikigpt_core.config import CleanConfig

ARTICLES = "articles.parquet"
_FILTER_FIELDS = ("min_chars", "max_markup_ratio", "min_language_prob", "max_list_ratio")


def run_clean(cfg: CleanConfig, dump_dir: Path, out: Path, work: Path) -> StageResult:
    """Extract and filter the dump in `dump_dir` into `out/articles.parquet`."""
    files = find_dump_files(Path(dump_dir))
    site = read_siteinfo(files.xml)
    language = resolve_language(cfg.language, wiki_language(site.dbname), site.lang,
                                language_from_filename(files.xml.name))
    if cfg.min_language_prob > 0:
        check_supported(language)
    filters = {k: getattr(cfg, k) for k in _FILTER_FIELDS}
    filters |= {"language": language, "url_base": site.article_url_base}
    parts_dir = Path(work) / _parts_key(files, filters, cfg.part_pages)
    parts_dir.mkdir(parents=True, exist_ok=True)
    workers = resolve_workers(cfg.workers)
    t0 = time.perf_counter()
    with ArtifactWriter(out, stage="cleaned_articles", config=dataclasses.asdict(cfg),
                        inputs={"wiki_dump": _dump_version(Path(dump_dir))}) as w:
        if files.index is not None:
            mode = "multistream"
            check_multistream_header(files.xml, files.index)
            stats_iter = _run_multistream(files, parts_dir, filters, cfg.part_pages, workers)
        else:
            mode = "sequential"
            stats_iter = _run_sequential(files, parts_dir, filters, cfg.part_pages, workers)
        part_stats = sorted(stats_iter, key=lambda s: s["part"])
        rows = _merge_parts(parts_dir, [s["part"] for s in part_stats], w.dir / ARTICLES, cfg.row_group_size)
        seconds = time.perf_counter() - t0
        if rows == 0:
            counts = Counter()
            for st in part_stats:
                counts.update(st["counts"])
            raise NothingKeptError(files.xml, language, {r: counts.get(r, 0) for r in ALL_REASONS})
        write_language(w.dir, language)
        w.stats.update(_summarize(part_stats, rows, mode, workers, seconds, files))
        w.stats |= {"language": language, "wiki": site.dbname or None}
        w.stats["examples"] = _examples(w.dir / ARTICLES)
    shutil.rmtree(parts_dir, ignore_errors=True)  # published: the parts are no longer needed
    return w.result


def _run_multistream(files: DumpFiles, parts_dir: Path, filters: dict, part_pages: int,
                     workers: int) -> Iterator[dict[str, Any]]:
    reused: list[dict[str, Any]] = []

    def todo() -> Iterator[tuple]:  # lazy: the index is read as workers free up
        for task in iter_tasks(files.xml, files.index, part_pages):
            if parts.is_finished(parts_dir, task.part):  # resume: a finished part is kept
                reused.append(parts.read_part_stats(parts_dir, task.part) | {"reused": True})
            else:
                yield (str(files.xml), task, str(parts_dir), filters)

    yield from bounded_map(parts.clean_streams, todo(), workers)
    yield from reused


def _run_sequential(files: DumpFiles, parts_dir: Path, filters: dict, part_pages: int,
                    workers: int) -> Iterator[dict[str, Any]]:
    reused: list[dict[str, Any]] = []

    def blocks() -> Iterator[tuple]:
        block, part = [], 0
        for page in iter_pages(files.xml):
            block.append(page)
            if len(block) == part_pages:
                yield from _block_task(block, part)
                block, part = [], part + 1
        if block:
            yield from _block_task(block, part)

    def _block_task(block: list, part: int) -> Iterator[tuple]:
        if parts.is_finished(parts_dir, part):  # resume: skip extraction of finished parts
            reused.append(parts.read_part_stats(parts_dir, part) | {"reused": True})
        else:
            yield (block, part, str(parts_dir), filters)

    yield from bounded_map(parts.clean_pages, blocks(), workers)
    yield from reused


def _merge_parts(parts_dir: Path, part_ids: list[int], dest: Path, row_group_size: int) -> int:
    with RowGroupWriter(dest, row_group_size) as writer:
        for part in part_ids:
            parquet, _ = parts.part_paths(parts_dir, part)
            for batch in iter_batches(parquet, batch_size=500):
                writer.write(batch)
    return writer.rows


def _summarize(part_stats: list[dict], rows: int, mode: str, workers: int, seconds: float,
               files: DumpFiles) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for s in part_stats:
        counts.update(s["counts"])
        for reason, title in s["drop_examples"].items():
            examples.setdefault(reason, title)
    pages = sum(s["pages_seen"] for s in part_stats)
    wikitext_mb = sum(s["wikitext_bytes"] for s in part_stats) / 1e6
    stats: dict[str, Any] = {
        "pages_seen": pages,
        "rows": rows,
        "mode": mode,
        "workers": workers,
        "parts": len(part_stats),
        "parts_reused": sum(1 for s in part_stats if s.get("reused")),
        "wikitext_mb": round(wikitext_mb, 3),
        "seconds": round(seconds, 3),
        "pages_per_s": round(pages / max(seconds, 1e-9), 1),
        "dump_file": files.xml.name,
    }
    stats |= {f"dropped_{r}": counts.get(r, 0) for r in ALL_REASONS}
    stats["filter_counts"] = {r: counts.get(r, 0) for r in ALL_REASONS}
    stats["drop_examples"] = examples
    return stats


def _examples(path: Path, n: int = 3, chars: int = 300) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in iter_batches(path, batch_size=n):
        for row in batch.to_pylist()[:n]:
            out.append({"id": row["id"], "title": row["title"], "url": row["url"], "text": row["text"][:chars]})
        break
    return out


def _parts_key(files: DumpFiles, filters: dict, part_pages: int) -> str:
    """Parts are only reused for the same dump bytes and the same filter settings."""
    st = files.xml.stat()
    blob = json.dumps([files.xml.name, st.st_size, st.st_mtime_ns, filters, part_pages], sort_keys=True)
    return "parts-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dump_version(dump_dir: Path) -> str:
    return manifest_hash(dump_dir) or ""

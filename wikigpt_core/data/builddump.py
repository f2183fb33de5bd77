"""Build multistream dumps (file + index) from raw <page> XML, as dumps.wikimedia.org lays
them out: a header stream, streams of `pages_per_stream` pages, a closing stream; index lines
`offset:page_id:title`. Used by tests and the data benchmarks to make larger dumps by
replicating the real sample's pages under new ids (`replicate`), or under new ids with
word-perturbed text that survives dedup (`perturbed_copies`, `benchmarks/data_scale.py`)."""
from __future__ import annotations

import bz2
import html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from wikigpt_core.data.sources import sample_path

_PAGE = re.compile(rb"<page>.*?</page>", re.DOTALL)
_PAGE_ID = re.compile(rb"(<ns>\d+</ns>\s*<id>)(\d+)(</id>)")
_TITLE = re.compile(rb"<title>(.*?)</title>")
_TEXT = re.compile(rb"(<text[^>]*>)(.*?)(</text>)", re.DOTALL)


def split_dump(path: Path | None = None) -> tuple[bytes, list[bytes]]:
    """(header through </siteinfo>, [raw <page> elements]) of a single-stream dump."""
    data = bz2.decompress(Path(path or sample_path()).read_bytes())
    head_end = data.index(b"</siteinfo>") + len(b"</siteinfo>")
    return data[:head_end] + b"\n", _PAGE.findall(data)


def page_id(page: bytes) -> int:
    return int(_PAGE_ID.search(page).group(2))


def page_title(page: bytes) -> str:
    return html.unescape(_TITLE.search(page).group(1).decode("utf-8"))


def with_id(page: bytes, new_id: int, title_suffix: str = "") -> bytes:
    """The page under a new page id (and optionally a new title)."""
    page = _PAGE_ID.sub(lambda m: m.group(1) + str(new_id).encode() + m.group(3), page, count=1)
    if title_suffix:
        page = _TITLE.sub(lambda m: b"<title>" + m.group(1) + title_suffix.encode() + b"</title>", page, count=1)
    return page


def replicate(pages: list[bytes], copies: int, id_stride: int = 1_000_000) -> Iterator[bytes]:
    """`copies` rounds of the pages; round c > 0 gets ids + c*id_stride and a title suffix."""
    for c in range(copies):
        for p in pages:
            yield p if c == 0 else with_id(p, page_id(p) + c * id_stride, f" (copy {c})")


def perturbed_copies(pages: list[bytes], copies: int, share: float = 0.15, seed: int = 0,
                     id_stride: int = 1_000_000) -> Iterator[bytes]:
    """`copies` rounds of the pages, as `replicate`, but every round after the first swaps a
    `share` of each page's plain words for other words of the same page.

    With 5-word shingles, swapping 15 % of the words changes ~56 % of the shingles, so a copy's
    Jaccard to its original is ~0.3: far below dedup's thresholds (0.65 for an LSH candidate,
    0.8 to merge), so every copy survives dedup as its own document. Markup, length and
    language stay the real ones: only lowercase words standing between two spaces are touched.
    """
    for c in range(copies):
        rng = np.random.default_rng([seed, c])
        for p in pages:
            if c == 0:
                yield p
                continue
            page = with_id(p, page_id(p) + c * id_stride, f" (copy {c})")
            yield _TEXT.sub(lambda m: m.group(1) + perturb_words(m.group(2), rng, share) + m.group(3), page, count=1)


def perturb_words(text: bytes, rng: np.random.Generator, share: float) -> bytes:
    """`text` with about `share` of its lowercase space-delimited words replaced by others of
    them (drawn at random), so word frequencies and lengths stay those of the text."""
    tokens = text.split(b" ")
    plain = [i for i, t in enumerate(tokens) if t.isalpha() and t.islower()]
    if len(plain) < 2:
        return text
    pick = rng.random(len(plain)) < share
    donors = rng.integers(0, len(plain), size=int(pick.sum()))
    for i, d in zip(np.asarray(plain)[pick].tolist(), donors.tolist()):
        tokens[i] = tokens[plain[d]]
    return b" ".join(tokens)


def write_multistream(header: bytes, pages: Iterable[bytes], xml_path: Path, index_path: Path,
                      pages_per_stream: int = 100, level: int = 9) -> dict[str, int]:
    """Write a multistream .xml.bz2 and its -index.txt.bz2; returns byte and page counts."""
    xml_path, index_path = Path(xml_path), Path(index_path)
    n_pages = xml_bytes = 0
    with xml_path.open("wb") as out, bz2.open(index_path, "wt", encoding="utf-8") as index:
        out.write(bz2.compress(header, level))
        xml_bytes += len(header)
        batch: list[bytes] = []

        def flush() -> None:
            nonlocal xml_bytes
            offset = out.tell()
            body = b"".join(b"  " + p + b"\n" for p in batch)
            out.write(bz2.compress(body, level))
            xml_bytes += len(body)
            for p in batch:
                index.write(f"{offset}:{page_id(p)}:{page_title(p)}\n")

        for p in pages:
            batch.append(p)
            n_pages += 1
            if len(batch) == pages_per_stream:
                flush()
                batch = []
        if batch:
            flush()
        tail = b"</mediawiki>\n"
        out.write(bz2.compress(tail, level))
        xml_bytes += len(tail)
    return {"pages": n_pages, "xml_bytes": xml_bytes, "bz2_bytes": xml_path.stat().st_size}


def write_single_stream(header: bytes, pages: Iterable[bytes], xml_path: Path) -> None:
    with bz2.open(xml_path, "wb") as out:
        out.write(header)
        for p in pages:
            out.write(b"  " + p + b"\n")
        out.write(b"</mediawiki>\n")

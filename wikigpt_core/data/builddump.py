"""Build multistream dumps (file + index) from raw <page> XML, as dumps.wikimedia.org lays
them out: a header stream, streams of `pages_per_stream` pages, a closing stream; index lines
`offset:page_id:title`. Used by tests and `benchmarks/data_pipeline.py` to make larger dumps
by replicating the real sample's pages under new ids."""
from __future__ import annotations

import bz2
import html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from wikigpt_core.data.sources import sample_path

_PAGE = re.compile(rb"<page>.*?</page>", re.DOTALL)
_PAGE_ID = re.compile(rb"(<ns>\d+</ns>\s*<id>)(\d+)(</id>)")
_TITLE = re.compile(rb"<title>(.*?)</title>")


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

"""Multistream dumps: the index, grouping streams into tasks, decompressing one stream.

A multistream dump is concatenated bz2 streams: the first holds `<mediawiki><siteinfo>`,
then each holds ~100 `<page>`s, and the last holds `</mediawiki>`. Index lines are
`offset:page_id:title`, offset = where the page's stream starts. Streams decompress
independently, so workers each take a contiguous run of streams.
"""
from __future__ import annotations

import bz2
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wikigpt_core.data.errors import (
    CorruptDumpError,
    EmptyDumpError,
    IndexMismatchError,
    TruncatedDumpError,
)
from wikigpt_core.data.xmlpages import RawPage, check_header, parse_pages_fragment


@dataclass(frozen=True)
class Stream:
    start: int
    end: int
    page_ids: tuple[int, ...]


@dataclass(frozen=True)
class StreamTask:
    """A contiguous run of streams that one worker turns into one part."""

    part: int
    streams: tuple[Stream, ...]

    @property
    def pages(self) -> int:
        return sum(len(s.page_ids) for s in self.streams)


def iter_index(index: Path) -> Iterator[tuple[int, int]]:
    """(offset, page_id) per index line, streaming."""
    try:
        with bz2.open(index, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    offset, page_id, _title = line.split(":", 2)
                    yield int(offset), int(page_id)
                except ValueError:
                    raise IndexMismatchError(index, f"line {lineno} is not offset:page_id:title: {line[:80]!r}") from None
    except EOFError as e:
        raise TruncatedDumpError(index, f" ({e})") from None
    except OSError as e:
        raise CorruptDumpError(index, f" ({e})") from None


def iter_streams(xml: Path, index: Path) -> Iterator[Stream]:
    """Streams in file order with their byte ranges and the page ids the index promises."""
    size = Path(xml).stat().st_size
    current: int | None = None
    ids: list[int] = []
    for offset, page_id in iter_index(index):
        if offset >= size:
            raise IndexMismatchError(index, f"offset {offset} is past the end of {Path(xml).name} ({size} bytes)")
        if current is None or offset != current:
            if current is not None:
                if offset < current:
                    raise IndexMismatchError(index, f"offsets go backwards ({current} then {offset})")
                yield Stream(current, offset, tuple(ids))
            current, ids = offset, []
        ids.append(page_id)
    if current is None:
        raise EmptyDumpError(index, "the index lists no pages")
    yield Stream(current, size, tuple(ids))


def iter_tasks(xml: Path, index: Path, pages_per_task: int) -> Iterator[StreamTask]:
    """Group consecutive streams into tasks of about `pages_per_task` pages."""
    batch: list[Stream] = []
    n = part = 0
    for stream in iter_streams(xml, index):
        batch.append(stream)
        n += len(stream.page_ids)
        if n >= pages_per_task:
            yield StreamTask(part, tuple(batch))
            batch, n, part = [], 0, part + 1
    if batch:
        yield StreamTask(part, tuple(batch))


def first_offset(index: Path) -> int:
    for offset, _ in iter_index(index):
        return offset
    raise EmptyDumpError(index, "the index lists no pages")


def decompress_range(xml: Path, start: int, end: int) -> bytes:
    """Decompress the bz2 stream(s) in bytes [start, end) of the dump."""
    size = Path(xml).stat().st_size
    if not 0 <= start < end <= size:
        raise IndexMismatchError(xml, f"stream range {start}..{end} lies outside the file ({size} bytes)")
    with Path(xml).open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if not data.startswith(b"BZh"):
        raise IndexMismatchError(xml, f"no bz2 stream starts at index offset {start}")
    try:
        return bz2.decompress(data)
    except (EOFError, ValueError) as e:
        if end >= size:
            raise TruncatedDumpError(xml, f" in the stream at byte {start} ({e})") from None
        raise IndexMismatchError(xml, f"bytes {start}..{end} are not whole bz2 streams ({e})") from None
    except OSError as e:
        raise CorruptDumpError(xml, f" in the stream at byte {start} ({e})") from None


def check_multistream_header(xml: Path, index: Path) -> None:
    """The bytes before the first indexed stream must be the <mediawiki> header stream."""
    start = first_offset(index)
    if start == 0:  # header shares the first stream with pages: peek at its start
        try:
            with bz2.open(xml, "rb") as f:
                data = f.read(65536)
        except (EOFError, OSError) as e:
            raise CorruptDumpError(xml, f" at its start ({e})") from None
    else:
        data = decompress_range(xml, 0, start)
    check_header(data, xml)


def read_stream_pages(xml: Path, stream: Stream) -> list[RawPage]:
    """Decompress and parse one stream; its page ids must be the ones the index lists."""
    data = decompress_range(xml, stream.start, stream.end)
    pages = parse_pages_fragment(data, xml, f"stream at byte {stream.start}")
    got = tuple(p.id for p in pages)
    if got != stream.page_ids:
        raise IndexMismatchError(
            xml,
            f"stream at byte {stream.start} holds page ids {list(got[:5])}... "
            f"but the index lists {list(stream.page_ids[:5])}...",
        )
    return pages

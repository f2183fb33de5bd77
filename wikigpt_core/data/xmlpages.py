"""Stream <page> records out of MediaWiki XML export dumps, with typed errors for bad input.

Two readers share one record type:
- `iter_pages(path)`: sequential streaming over a whole (single-stream or multistream) bz2
  file, memory bounded by clearing each page after use;
- `parse_pages_fragment(data, path, where)`: the pages of one multistream bz2 stream, which
  holds bare `<page>` elements (the namespace lives on the root, in the first stream).
"""
from __future__ import annotations

import bz2
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wikigpt_core.data.errors import (
    CorruptDumpError,
    CorruptXMLError,
    EmptyDumpError,
    NotMediaWikiError,
    TruncatedDumpError,
)

MEDIAWIKI_NS_PREFIX = "http://www.mediawiki.org/xml/export-"


@dataclass(slots=True)
class RawPage:
    """One <page> as stored in the dump: wikitext, not yet cleaned."""

    id: int
    ns: int
    title: str
    redirect: bool
    text: str


def open_dump(path: Path):
    """Binary stream of the decompressed XML (bz2 by suffix, else raw)."""
    path = Path(path)
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")  # BZ2File reads concatenated (multistream) streams too
    return path.open("rb")


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, local = tag[1:].split("}", 1)
        return ns, local
    return "", tag


def check_root(path: Path, tag: str) -> str:
    """Raise NotMediaWikiError unless `tag` is <mediawiki xmlns=".../export-N">; return the ns."""
    ns, local = _split_tag(tag)
    if local != "mediawiki" or not ns.startswith(MEDIAWIKI_NS_PREFIX):
        raise NotMediaWikiError(path, f"<{local}>" + (f" in namespace {ns}" if ns else ""))
    return ns


def page_from_element(el: ET.Element, q: str, path: Path) -> RawPage:
    """Build a RawPage from a <page> element; q is the "{namespace}" prefix ('' if none)."""
    try:
        page_id = int(el.findtext(f"{q}id") or "")
        ns = int(el.findtext(f"{q}ns") or "0")
    except ValueError:
        raise CorruptXMLError(path, f"<page> {el.findtext(f'{q}title')!r} lacks a numeric <id>/<ns>") from None
    rev = el.find(f"{q}revision")
    text = (rev.findtext(f"{q}text") if rev is not None else None) or ""
    return RawPage(
        id=page_id,
        ns=ns,
        title=el.findtext(f"{q}title") or "",
        redirect=el.find(f"{q}redirect") is not None,
        text=text,
    )


def iter_pages(path: Path) -> Iterator[RawPage]:
    """Every page of the dump in file order, streaming. Raises a DumpError subclass on bad input."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyDumpError(path, "the file is 0 bytes")
    seen_root = False
    pages = 0
    try:
        with open_dump(path) as f:
            events = ET.iterparse(f, events=("start", "end"))
            root = None
            q = ""
            for event, el in events:
                if event == "start":
                    if not seen_root:
                        ns = check_root(path, el.tag)
                        q, root, seen_root = "{" + ns + "}", el, True
                    continue
                if el.tag == f"{q}page":
                    pages += 1
                    yield page_from_element(el, q, path)
                    root.clear()  # drop finished pages so memory stays flat
    except ET.ParseError as e:
        line, col = e.position
        if not seen_root and (line, col) == (1, 0):
            raise EmptyDumpError(path, "it decompresses to no XML at all") from None
        raise CorruptXMLError(path, f"line {line}, column {col}: {e.msg if hasattr(e, 'msg') else e}") from None
    except EOFError as e:
        raise TruncatedDumpError(path, f" ({e})") from None
    except OSError as e:
        raise CorruptDumpError(path, f" ({e})") from None
    if pages == 0:
        raise EmptyDumpError(path)


def parse_pages_fragment(data: bytes, path: Path, where: str) -> list[RawPage]:
    """Pages in one decompressed multistream stream (bare <page> elements, no root)."""
    end = data.rfind(b"</mediawiki>")
    if end != -1:
        data = data[:end]
    if data.lstrip().startswith(b"<mediawiki"):  # header and pages share the first stream
        check_header(data, path)
        cut = data.find(b"</siteinfo>")
        data = data[cut + len(b"</siteinfo>"):] if cut != -1 else data[data.find(b">") + 1:]
    try:
        root = ET.fromstring(b"<pages>" + data + b"</pages>")
    except ET.ParseError as e:
        line, col = e.position
        raise CorruptXMLError(path, f"{where}, line {line}, column {col}: {e}") from None
    return [page_from_element(el, "", path) for el in root.iter("page")]


def check_header(data: bytes, path: Path) -> None:
    """Validate the first multistream stream (<mediawiki ...><siteinfo>...)."""
    head = data.lstrip()
    if not head:
        raise EmptyDumpError(path, "the first bz2 stream is empty")
    parser = ET.XMLPullParser(events=("start",))
    try:
        parser.feed(head[:65536])
        for _, el in parser.read_events():
            check_root(path, el.tag)
            return
    except ET.ParseError as e:
        raise CorruptXMLError(path, f"header stream: {e}") from None
    raise CorruptXMLError(path, "header stream has no root element")

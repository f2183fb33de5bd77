"""Stream <page> records out of MediaWiki XML export dumps, with typed errors for bad input.

Two readers share one record type:
- `iter_pages(path)`: sequential streaming over a whole (single-stream or multistream) bz2
  file, memory bounded by clearing each page after use;
- `parse_pages_fragment(data, path, where)`: the pages of one multistream bz2 stream, which
  holds bare `<page>` elements (the namespace lives on the root, in the first stream).

Encodings: dumps.wikimedia.org writes UTF-8. A single-stream file in UTF-16 (with or without a
byte-order mark, like gensim's bgwiki sample) or ISO-8859-1 is read too (expat decodes it);
any other encoding, and a multistream file that is not UTF-8 (its streams are cut at byte
offsets of UTF-8 text), is refused with `UnsupportedEncodingError` naming the encoding.
"""
from __future__ import annotations

import bz2
import re
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
    UnsupportedEncodingError,
)

MEDIAWIKI_NS_PREFIX = "http://www.mediawiki.org/xml/export-"
READABLE_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "us-ascii", "iso-8859-1")
"""What expat decodes by itself, so `iter_pages` reads these files unchanged."""
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"),
)
_DECLARED = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ALIASES = {"utf8": "utf-8", "ascii": "us-ascii", "latin-1": "iso-8859-1", "latin1": "iso-8859-1",
            "utf-16": "utf-16-le"}


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


def sniff_encoding(head: bytes) -> str:
    """The character encoding of XML from its first bytes: byte-order mark, else the `<`
    pattern of UTF-16 without a mark, else the XML declaration, else UTF-8 (the XML default)."""
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return enc
    if head[:2] == b"<\x00":
        return "utf-16-le"
    if head[:2] == b"\x00<":
        return "utf-16-be"
    m = _DECLARED.match(head.lstrip())
    if m:
        name = m.group(1).decode("ascii").lower()
        return _ALIASES.get(name, name)
    return "utf-8"


def check_encoding(path: Path, head: bytes, allowed: tuple[str, ...] = READABLE_ENCODINGS,
                   detail: str = "") -> str:
    """The sniffed encoding, or UnsupportedEncodingError if it is not in `allowed`."""
    enc = sniff_encoding(head)
    if enc not in allowed:
        raise UnsupportedEncodingError(path, enc.upper(), detail)
    return enc


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the dump says about its wiki (from the root element and <siteinfo>)."""

    dbname: str
    """e.g. `bgwiki`."""
    base: str
    """URL of the main page, e.g. `https://bg.wikipedia.org/wiki/...`."""
    lang: str
    """The root's xml:lang attribute (e.g. `bg`), '' if absent."""

    @property
    def article_url_base(self) -> str:
        """`https://bg.wikipedia.org/wiki/`, '' when <base> is missing or odd."""
        cut = self.base.find("/wiki/")
        return self.base[: cut + len("/wiki/")] if cut != -1 else ""


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def read_siteinfo(path: Path) -> SiteInfo:
    """Site facts from the start of the dump (reads only the first few kilobytes)."""
    path = Path(path)
    dbname = base = lang = ""
    try:
        with open_dump(path) as f:
            for event, el in ET.iterparse(f, events=("start", "end")):
                _, local = _split_tag(el.tag)
                if event == "start" and local == "mediawiki":
                    lang = el.get(_XML_LANG, "")
                elif event == "end" and local == "dbname":
                    dbname = el.text or ""
                elif event == "end" and local == "base":
                    base = el.text or ""
                elif (event == "end" and local == "siteinfo") or local == "page":
                    break
    except (ET.ParseError, EOFError, OSError):
        pass  # the stages themselves report bad files with their typed errors
    return SiteInfo(dbname=dbname.strip(), base=base.strip(), lang=lang.strip().lower())


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
            check_encoding(path, f.peek(64)[:64] if hasattr(f, "peek") else b"")
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
    check_encoding(path, data[:64], ("utf-8", "us-ascii"),
                   " (a multistream dump must be UTF-8: its streams are cut at UTF-8 byte offsets)")
    parser = ET.XMLPullParser(events=("start",))
    try:
        parser.feed(head[:65536])
        for _, el in parser.read_events():
            check_root(path, el.tag)
            return
    except ET.ParseError as e:
        raise CorruptXMLError(path, f"header stream: {e}") from None
    raise CorruptXMLError(path, "header stream has no root element")

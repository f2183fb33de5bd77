"""`wiki_dump`: put the configured dump into an artifact, verified.

Sources (DumpConfig.source):
- `sample`: the real enwiki sample inside the gensim wheel (copied);
- a local path to a `.xml.bz2` (hard-linked when possible, else copied; a multistream file
  brings its `-index.txt.bz2` along and is refused without it);
- a dump name `enwiki/20261101`: the multistream file and its index from `base_url`, fetched
  with HTTP range-resume into the work directory and renamed into place only once its SHA-1
  matches the dump's published `sha1sums`;
- `enwiki/latest` (any `<wiki>/latest`): the newest dump whose multistream files the site's
  `dumpstatus.json` reports done (`wikigpt_core.data.dumpsite`), resolved when the stage runs.

Every source is checked before it is published: the XML root must be a MediaWiki export; a
single-stream file is scanned to the end (page count, truncation); a multistream file has its
last stream decompressed (truncation) and its pages counted from the index.
"""
from __future__ import annotations

import bz2
import codecs
import dataclasses
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikigpt_core.artifacts import ArtifactWriter, StageResult, file_sha1
from wikigpt_core.data import dumpsite
from wikigpt_core.data.download import download, fetch_text, parse_sha1sums
from wikigpt_core.data.errors import (
    CorruptDumpError,
    DownloadError,
    DumpError,
    EmptyDumpError,
    MissingIndexError,
    TruncatedDumpError,
)
from wikigpt_core.data.multistream import check_multistream_header, iter_streams, read_stream_pages
from wikigpt_core.data.sources import (
    index_for,
    is_multistream_name,
    multistream_names,
    parse_dump_name,
    sample_path,
)
from wikigpt_core.data.language import language_from_filename, resolve_language, wiki_language
from wikigpt_core.data.xmlpages import check_encoding, check_header, read_siteinfo

if TYPE_CHECKING:
    from wikigpt_core.config import DumpConfig

_DATE_IN_NAME = re.compile(r"-(\d{8})-")
_TIMESTAMP = re.compile(rb"<timestamp>(\d{4}-\d\d-\d\d)T")
_SCAN_CHUNK = 1 << 22


def run_dump(cfg: DumpConfig, out: Path, work: Path, *, identity: str = "") -> StageResult:
    """Publish the configured dump (and its index, if multistream) at `out`. For
    `<wiki>/latest`, `identity` (an `observe_dump` result, e.g. the source's last observation)
    pins the date to fetch, so the artifact is the dump that was observed; without it the
    newest finished dump is resolved now."""
    source = cfg.source.strip()
    with ArtifactWriter(out, stage="wiki_dump", config=dataclasses.asdict(cfg)) as w:
        name = parse_dump_name(source)
        if name is not None:
            wiki, date = name
            extra = {}
            if date == dumpsite.LATEST:
                date = identity_date(identity, wiki) or dumpsite.resolve_latest(cfg.base_url, wiki).date
                extra = {"resolved_from": source}
            xml, index, fetched = _fetch_named(cfg.base_url, wiki, date, Path(work))
            extra |= fetched
            # Checked where it was downloaded, so an error names a file that is still there.
            pages, newest = _check(xml, index)
            xml, index = _move_into(xml, w.dir), _move_into(index, w.dir)
        else:
            src, index_src = _local_source(source)
            # The user's own file is checked, not the copy: an error names their file.
            with _about_local_file():
                pages, newest = _check(src, index_src)
            xml = _place_local(src, w.dir)
            index = _place_local(index_src, w.dir) if index_src is not None else None
            date, extra = None, {}
        m = _DATE_IN_NAME.search(xml.name)
        site = read_siteinfo(xml)
        w.stats.update({
            "wiki": site.dbname or None,
            "language": resolve_language("", wiki_language(site.dbname), site.lang,
                                         language_from_filename(xml.name)),
            "source": source,
            "dump_date": date or (m.group(1) if m else None) or newest or "unknown",
            "file": xml.name,
            "multistream": index is not None,
            "bytes": xml.stat().st_size,
            "sha1": file_sha1(xml),
            "pages": pages,
        } | extra)
    return w.result


def observe_dump(cfg: DumpConfig, timeout: float = 30.0) -> str:
    """Identity of the dump the source names, for the Dagster observable source: for a dump
    name, `<wiki>/<date>:<sha1 of the file>:<sha1 of the index>` as published (for
    `<wiki>/latest`, of the newest finished dump); for `sample`, its SHA-1; for a local file,
    its path, size and mtime. A dump name asks the dump site (network); an unreachable site or
    an unfinished dump raises DownloadError rather than returning a different identity, so a
    network glitch never looks like a new dump."""
    source = cfg.source.strip()
    if source == "sample":
        return "sample:" + file_sha1(sample_path())
    name = parse_dump_name(source)
    if name is not None:
        wiki, date = name
        if date == dumpsite.LATEST:
            return dumpsite.resolve_latest(cfg.base_url, wiki, timeout).identity
        xml_name, index_name = multistream_names(wiki, date)
        sums = parse_sha1sums(fetch_text(_sums_url(cfg.base_url, wiki, date), timeout=timeout))
        missing = [n for n in (xml_name, index_name) if n not in sums]
        if missing:
            raise dumpsite.DumpNotFinishedError(_sums_url(cfg.base_url, wiki, date),
                                                f"no published SHA-1 for {missing}",
                                                "The dump may still be in progress.")
        return f"{wiki}/{date}:{sums[xml_name]}:{sums[index_name]}"
    path = Path(source).expanduser()
    if not path.exists():
        return f"{source}:missing"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def identity_date(identity: str, wiki: str) -> str | None:
    """The date in a `<wiki>/<date>:<sha1>:<sha1>` identity of that wiki, else None."""
    m = re.match(rf"^{re.escape(wiki)}/(\d{{8}}):", identity or "")
    return m.group(1) if m else None


def static_fingerprint(cfg: DumpConfig) -> str:
    """What can be said about the source without the network: the dump name as written
    (`enwiki/latest`, `enwiki/20261101`), or a local file's path, size and mtime. For the code
    version at load time; the published identity comes from observing the source."""
    source = cfg.source.strip()
    if parse_dump_name(source) is not None:
        return source
    return observe_dump(cfg)  # sample or a local file: a checksum or a stat, no network


def _place_local(src: Path, dest_dir: Path) -> Path:
    """Hard-link (instant, no extra space) or copy src into dest_dir."""
    dest = dest_dir / src.name
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


def _sums_url(base_url: str, wiki: str, date: str) -> str:
    return f"{base_url.rstrip('/')}/{wiki}/{date}/{wiki}-{date}-sha1sums.txt"


def _fetch_named(base_url: str, wiki: str, date: str, work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Download the dump's multistream file and index into `work`, each verified against the
    published SHA-1; returns their paths and the download figures."""
    xml_name, index_name = multistream_names(wiki, date)
    sums = parse_sha1sums(fetch_text(_sums_url(base_url, wiki, date)))
    fetched: list[Path] = []
    extra: dict[str, Any] = {}
    for fname in (xml_name, index_name):
        if fname not in sums:
            raise DownloadError(_sums_url(base_url, wiki, date), f"no published SHA-1 for {fname}",
                                "The dump may still be in progress; pick a finished dump date.")
        info = download(f"{base_url.rstrip('/')}/{wiki}/{date}/{fname}", work / fname, sums[fname])
        if fname == xml_name:
            extra = {"download_attempts": info["attempts"], "resumed_from_byte": info["resumed_from"]}
        fetched.append(work / fname)
    return fetched[0], fetched[1], extra


def _move_into(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / src.name
    try:
        os.replace(src, dest)  # same filesystem: a rename, no copy of 22 GB
    except OSError:
        shutil.copyfile(src, dest)
        src.unlink()
    return dest


def _local_source(source: str) -> tuple[Path, Path | None]:
    """The user's dump file (`sample`: the one in the gensim wheel) and its multistream index."""
    if source == "sample":
        return sample_path(), None
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(
            f"dump source {source!r} is neither `sample`, a dump name like enwiki/20261101, "
            "nor an existing file; fix DumpConfig.source / WIKIGPT_DUMP")
    index_src = index_for(src)
    if is_multistream_name(src) and not index_src.exists():
        raise MissingIndexError(src, index_src.name)
    return src, index_src if index_src.exists() else None


@contextmanager
def _about_local_file() -> Iterator[None]:
    """A damaged local file is replaced by its owner, not fetched again by the pipeline."""
    try:
        yield
    except DumpError as e:
        raise e.about_local_file(e.path) from None


def _check(xml: Path, index: Path | None) -> tuple[int, str | None]:
    """Pages, and the newest revision date where the whole file is scanned."""
    if index is not None:
        return _check_multistream(xml, index), None
    return _scan(xml)


def _check_multistream(xml: Path, index: Path) -> int:
    """Header is MediaWiki, the last stream decompresses (not truncated); pages from the index."""
    pages, last = 0, None
    for stream in iter_streams(xml, index):  # validates offsets against the file size
        pages, last = pages + len(stream.page_ids), stream
    check_multistream_header(xml, index)
    read_stream_pages(xml, last)  # truncated tail, or a last stream the index does not match
    return pages


def _scan(xml: Path) -> tuple[int, str | None]:
    """Stream the whole file once: count <page>s, find the newest revision date, check the
    header and that the bz2 data ends properly."""
    if xml.stat().st_size == 0:
        raise EmptyDumpError(xml, "the file is 0 bytes")
    pages, newest, head, tail = 0, None, b"", b""
    opener = bz2.open if xml.suffix == ".bz2" else open
    decoder = None  # set for a non-UTF-8 file: the scan then looks at its text as UTF-8
    try:
        with opener(xml, "rb") as f:
            while chunk := f.read(_SCAN_CHUNK):
                if not head:
                    encoding = check_encoding(xml, chunk[:64])
                    if encoding not in ("utf-8", "us-ascii"):
                        decoder = codecs.getincrementaldecoder(encoding)()
                if decoder is not None:
                    text = decoder.decode(chunk)
                    chunk = (text if head else text.lstrip("\ufeff")).encode("utf-8")
                if not head:
                    head = chunk[:65536]
                    check_header(head, xml)
                window = tail + chunk
                pages += window.count(b"<page>") - tail.count(b"<page>")
                for stamp in _TIMESTAMP.findall(window):
                    if newest is None or stamp.decode() > newest:
                        newest = stamp.decode()
                tail = chunk[-64:]
    except EOFError as e:
        raise TruncatedDumpError(xml, f" ({e})") from None
    except OSError as e:
        raise CorruptDumpError(xml, f" ({e})") from None
    if not head:
        raise EmptyDumpError(xml, "it decompresses to nothing")
    if pages == 0:
        raise EmptyDumpError(xml)
    return pages, newest

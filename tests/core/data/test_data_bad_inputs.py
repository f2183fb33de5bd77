"""Every kind of bad dump gets a typed error naming the file, and no artifact is published."""
from __future__ import annotations

import bz2
import dataclasses
from pathlib import Path

import pytest
from conftest import make_multistream, make_single

from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dump import run_dump
from wikigpt_core.data.errors import (
    CorruptXMLError,
    DumpError,
    EmptyDumpError,
    IndexMismatchError,
    MissingIndexError,
    NotMediaWikiError,
    TruncatedDumpError,
)
from wikigpt_core.data.sources import sample_path


def _assert_fails(fn, err_type, path: Path, out: Path):
    with pytest.raises(err_type) as info:
        fn()
    assert path.name in str(info.value), str(info.value)
    assert not out.exists(), "a failed stage must not publish its artifact"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")], "temp dir left"
    return info.value


def _dump(settings, src: Path, tmp: Path):
    cfg = dataclasses.replace(settings.dump, source=str(src))
    out = tmp / "wiki_dump"
    return (lambda: run_dump(cfg, out, tmp / "work_dump")), out


def _clean(settings, dump_dir: Path, tmp: Path, **kw):
    cfg = dataclasses.replace(settings.clean, **kw)
    out = tmp / "cleaned_articles"
    return (lambda: run_clean(cfg, dump_dir, out, tmp / "work_clean")), out


def test_truncated_single_stream(settings, tmp_path):
    data = sample_path().read_bytes()
    src = tmp_path / "in" / "enwiki-truncated.xml.bz2"
    src.parent.mkdir()
    src.write_bytes(data[: len(data) * 6 // 10])
    fn, out = _dump(settings, src, tmp_path)
    _assert_fails(fn, TruncatedDumpError, src, out)
    fn, out = _clean(settings, src.parent, tmp_path)
    err = _assert_fails(fn, TruncatedDumpError, src, out)
    assert "truncated" in str(err)


def test_truncated_multistream(settings, tmp_path, sample_split):
    header, pages = sample_split
    xml, _ = make_multistream(tmp_path / "in", header, pages)
    data = xml.read_bytes()
    xml.write_bytes(data[:-200])  # cut inside the last page stream (the closing stream is ~50 bytes)
    fn, out = _dump(settings, xml, tmp_path)
    _assert_fails(fn, TruncatedDumpError, xml, out)
    fn, out = _clean(settings, xml.parent, tmp_path, workers=1)
    _assert_fails(fn, TruncatedDumpError, xml, out)


def test_corrupt_xml_single_stream(settings, tmp_path, sample_split):
    header, pages = sample_split
    broken = pages[:]
    broken[30] = broken[30].replace(b"</title>", b"</titel>", 1)
    src = make_single(tmp_path / "in", header + b"".join(broken) + b"</mediawiki>")
    fn, out = _clean(settings, src.parent, tmp_path)
    err = _assert_fails(fn, CorruptXMLError, src, out)
    assert "line" in str(err)


def test_corrupt_xml_in_one_stream_parallel(settings, tmp_path, sample_split):
    """The error is raised in a worker process and reaches the caller intact."""
    header, pages = sample_split
    broken = pages[:]
    broken[120] = broken[120].replace(b"<revision>", b"<revision><<", 1)
    xml, _ = make_multistream(tmp_path / "in", header, broken)
    fn, out = _clean(settings, xml.parent, tmp_path, workers=2, part_pages=25)
    err = _assert_fails(fn, CorruptXMLError, xml, out)
    assert "stream at byte" in str(err)


def test_empty_files(settings, tmp_path):
    zero = tmp_path / "in" / "enwiki-empty.xml.bz2"
    zero.parent.mkdir()
    zero.write_bytes(b"")
    fn, out = _dump(settings, zero, tmp_path)
    _assert_fails(fn, EmptyDumpError, zero, out)
    fn, out = _clean(settings, zero.parent, tmp_path)
    _assert_fails(fn, EmptyDumpError, zero, out)


def test_dump_without_pages(settings, tmp_path, sample_split):
    header, _ = sample_split
    src = make_single(tmp_path / "in", header + b"</mediawiki>\n")
    fn, out = _dump(settings, src, tmp_path)
    err = _assert_fails(fn, EmptyDumpError, src, out)
    assert "no <page>" in str(err)
    fn, out = _clean(settings, src.parent, tmp_path)
    _assert_fails(fn, EmptyDumpError, src, out)


def test_not_mediawiki(settings, tmp_path):
    src = make_single(tmp_path / "in", b"<?xml version='1.0'?><rss><channel><item>x</item></channel></rss>")
    fn, out = _dump(settings, src, tmp_path)
    err = _assert_fails(fn, NotMediaWikiError, src, out)
    assert "<rss>" in str(err)
    fn, out = _clean(settings, src.parent, tmp_path)
    _assert_fails(fn, NotMediaWikiError, src, out)


def test_wrong_namespace_root_is_not_mediawiki(settings, tmp_path):
    src = make_single(tmp_path / "in", b'<mediawiki xmlns="http://example.com/other"><page/></mediawiki>')
    fn, out = _clean(settings, src.parent, tmp_path)
    _assert_fails(fn, NotMediaWikiError, src, out)


def test_missing_index(settings, tmp_path, sample_split):
    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "in", header, pages)
    index.unlink()
    fn, out = _dump(settings, xml, tmp_path)
    err = _assert_fails(fn, MissingIndexError, xml, out)
    assert index.name in str(err)
    fn, out = _clean(settings, xml.parent, tmp_path)
    _assert_fails(fn, MissingIndexError, xml, out)


def test_index_of_another_dump(settings, tmp_path, sample_split):
    """An index whose offsets do not fall on this file's stream boundaries."""
    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "in", header, pages, per_stream=25)
    _, other = make_multistream(tmp_path / "other", header, pages, per_stream=40)
    index.write_bytes(other.read_bytes())
    fn, out = _clean(settings, xml.parent, tmp_path, workers=1)
    _assert_fails(fn, IndexMismatchError, xml, out)


def test_index_with_wrong_ids(settings, tmp_path, sample_split):
    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "in", header, pages)
    lines = bz2.decompress(index.read_bytes()).decode().splitlines()
    off, pid, title = lines[60].split(":", 2)
    lines[60] = f"{off}:{int(pid) + 7}:{title}"
    index.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    fn, out = _clean(settings, xml.parent, tmp_path, workers=1)
    err = _assert_fails(fn, IndexMismatchError, xml, out)
    assert "page ids" in str(err)


def test_index_offset_past_end(settings, tmp_path, sample_split):
    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "in", header, pages)
    index.write_bytes(bz2.compress(f"{xml.stat().st_size + 10}:12:Anarchism\n".encode()))
    fn, out = _dump(settings, xml, tmp_path)
    err = _assert_fails(fn, IndexMismatchError, index, out)
    assert "past the end" in str(err)


def test_errors_are_dump_errors():
    assert issubclass(TruncatedDumpError, DumpError) and issubclass(DumpError, ValueError)


def test_a_bad_local_dump_names_the_users_file_and_says_to_replace_it(settings, tmp_path):
    """Not the copy that was read (gone with the unpublished artifact), and not "fetch it
    again", which the pipeline cannot do for a file it did not download."""
    from wikigpt_core.data.errors import REFETCH_HINT

    data = sample_path().read_bytes()
    src = tmp_path / "in" / "enwiki-truncated.xml.bz2"
    src.parent.mkdir()
    src.write_bytes(data[: len(data) * 6 // 10])
    fn, out = _dump(settings, src, tmp_path)
    err = _assert_fails(fn, TruncatedDumpError, src, out)
    assert str(err).startswith(f"{src}: truncated bz2")
    assert REFETCH_HINT not in str(err) and "copy or download it again" in str(err)
    assert err.path == str(src)


def test_a_bad_downloaded_dump_names_the_downloaded_file_and_says_to_fetch_again(settings, tmp_path):
    import hashlib

    from tests.core.data.dumpsite_server import DumpSite
    from wikigpt_core.data.errors import REFETCH_HINT

    header = sample_path().read_bytes()
    bad = header[: len(header) // 2]  # a truncated file, published with its own SHA-1
    site = DumpSite()
    try:
        site.publish("enwiki", "20990101", bad, bz2.compress(b"0:1:Page\n"))
        cfg = dataclasses.replace(settings.dump, source="enwiki/20990101", base_url=site.url)
        with pytest.raises(TruncatedDumpError) as info:
            run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "work_dump")
    finally:
        site.close()
    named = Path(info.value.path)
    assert named.is_file() and named.parent == tmp_path / "work_dump", info.value
    assert hashlib.sha1(named.read_bytes()).hexdigest() == hashlib.sha1(bad).hexdigest()
    assert str(info.value).endswith(REFETCH_HINT)
    assert not (tmp_path / "wiki_dump").exists()

"""Fetching a dump by name over real HTTP (127.0.0.1): range-resume after a planted
interruption, resume of a previous run's partial file, and a planted checksum mismatch."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_multistream

from wikigpt_core.data.dump import observe_dump, run_dump
from wikigpt_core.data.errors import ChecksumMismatchError, DownloadError

DATE = "20990101"
XML = f"enwiki-{DATE}-pages-articles-multistream.xml.bz2"
INDEX = f"enwiki-{DATE}-pages-articles-multistream-index.txt.bz2"


class DumpServer:
    """Serves files under /enwiki/<date>/ with Range support; can cut the first response of
    one file short (closing the connection mid-body) and can publish a wrong SHA-1."""

    def __init__(self, files: dict[str, bytes], cut_first: str | None = None, wrong_sha1: str | None = None):
        sums = {n: hashlib.sha1(b).hexdigest() for n, b in files.items()}
        if wrong_sha1:
            sums[wrong_sha1] = "0" * 40
        files = files | {f"enwiki-{DATE}-sha1sums.txt": "".join(f"{h}  {n}\n" for n, h in sums.items()).encode()}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if not self.path.startswith(f"/enwiki/{DATE}/") or name not in files:
                    self.send_error(404)
                    return
                body = files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if name == cut_first and sum(1 for n, _ in server.requests if n == name) == 1:
                    self.wfile.write(payload[: len(payload) // 3])  # planted interruption
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def dump_files(tmp_path, sample_split):
    header, pages = sample_split
    xml, index = make_multistream(tmp_path / "src", header, pages, name=f"enwiki-{DATE}-pages-articles-multistream")
    return {XML: xml.read_bytes(), INDEX: index.read_bytes()}


def _cfg(settings, url):
    return dataclasses.replace(settings.dump, source=f"enwiki/{DATE}", base_url=url)


def test_download_resumes_after_interruption(settings, tmp_path, dump_files):
    srv = DumpServer(dump_files, cut_first=XML)
    try:
        r = run_dump(_cfg(settings, srv.url), tmp_path / "wiki_dump", tmp_path / "work")
    finally:
        srv.close()
    body = dump_files[XML]
    xml_requests = [rng for n, rng in srv.requests if n == XML]
    assert xml_requests[0] is None
    assert xml_requests[1] == f"bytes={len(body) // 3}-", "second request must resume where the cut left off"
    assert (tmp_path / "wiki_dump" / XML).read_bytes() == body
    assert (tmp_path / "wiki_dump" / INDEX).exists()
    st = r.stats
    assert st["sha1"] == hashlib.sha1(body).hexdigest() and st["pages"] == 206
    assert st["dump_date"] == DATE and st["download_attempts"] == 2 and st["multistream"]
    assert not list((tmp_path / "work").glob("*.part"))


def test_download_resumes_a_previous_partial_file(settings, tmp_path, dump_files):
    work = tmp_path / "work"
    work.mkdir()
    (work / (XML + ".part")).write_bytes(dump_files[XML][:5000])  # left by a killed run
    srv = DumpServer(dump_files)
    try:
        r = run_dump(_cfg(settings, srv.url), tmp_path / "wiki_dump", work)
    finally:
        srv.close()
    assert ("" + XML, "bytes=5000-") in srv.requests
    assert r.stats["resumed_from_byte"] == 5000
    assert (tmp_path / "wiki_dump" / XML).read_bytes() == dump_files[XML]


def test_checksum_mismatch_publishes_nothing(settings, tmp_path, dump_files):
    srv = DumpServer(dump_files, wrong_sha1=XML)
    out, work = tmp_path / "wiki_dump", tmp_path / "work"
    try:
        with pytest.raises(ChecksumMismatchError) as info:
            run_dump(_cfg(settings, srv.url), out, work)
    finally:
        srv.close()
    assert XML in str(info.value) and "0" * 40 in str(info.value)
    assert not out.exists()
    assert not (work / XML).exists() and not (work / (XML + ".part")).exists()


def test_observe_named_dump_uses_published_checksum(settings, dump_files):
    srv = DumpServer(dump_files)
    try:
        fp = observe_dump(_cfg(settings, srv.url))
    finally:
        srv.close()
    sha = {n: hashlib.sha1(b).hexdigest() for n, b in dump_files.items()}
    assert fp == f"enwiki/{DATE}:{sha[XML]}:{sha[INDEX]}"


def test_observe_unreachable_raises_instead_of_changing_identity(settings):
    # A network glitch must not look like a new dump (that would mark wiki_dump stale).
    with pytest.raises(DownloadError) as info:
        observe_dump(_cfg(settings, "http://127.0.0.1:9"))
    assert info.value.transient


def test_observe_local_file_changes_with_content(settings, tmp_path):
    f = tmp_path / "x.xml.bz2"
    f.write_bytes(b"a")
    cfg = dataclasses.replace(settings.dump, source=str(f))
    first = observe_dump(cfg)
    f.write_bytes(b"ab")
    assert observe_dump(cfg) != first and str(f) in first

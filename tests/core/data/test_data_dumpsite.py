"""`<wiki>/latest` against a real HTTP dump site on 127.0.0.1: the newest dump whose multistream
files are done, identified by its date and published SHA-1s; errors say transient or not."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
from conftest import make_multistream
from dumpsite_server import DumpSite

from wikigpt_core.data import dumpsite
from wikigpt_core.data.dump import observe_dump, run_dump
from wikigpt_core.data.errors import DownloadError, is_transient
from wikigpt_core.data.sources import multistream_names

A, B = "20990101", "20990120"


@pytest.fixture()
def site(tmp_path, sample_split):
    header, pages = sample_split
    srv = DumpSite()
    for date, n in ((A, 120), (B, 206)):
        xml, index = make_multistream(tmp_path / date, header, pages[:n],
                                      name=f"enwiki-{date}-pages-articles-multistream")
        srv.publish("enwiki", date, xml.read_bytes(), index.read_bytes(), status="done")
    yield srv
    srv.close()


def _sha1s(site, date):
    files = site.dumps[("enwiki", date)]["files"]
    return [hashlib.sha1(files[n]).hexdigest() for n in multistream_names("enwiki", date)]


def test_latest_is_the_newest_finished_dump(site):
    site.set_status("enwiki", B, "in-progress")
    found = dumpsite.resolve_latest(site.url, "enwiki")
    assert found.date == A
    assert found.identity == f"enwiki/{A}:" + ":".join(_sha1s(site, A))
    site.set_status("enwiki", B, "done")
    assert dumpsite.resolve_latest(site.url, "enwiki").date == B


def test_a_dump_in_progress_is_not_finished(site):
    site.set_status("enwiki", B, "in-progress")
    with pytest.raises(dumpsite.DumpNotFinishedError, match="in-progress"):
        dumpsite.finished_dump(site.url, "enwiki", B)


def test_run_dump_fetches_latest(settings, site, tmp_path):
    site.set_status("enwiki", B, "in-progress")
    cfg = dataclasses.replace(settings.dump, source="enwiki/latest", base_url=site.url)
    result = run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "work")
    assert result.stats["dump_date"] == A and result.stats["resolved_from"] == "enwiki/latest"
    assert result.stats["pages"] == 120 and result.stats["sha1"] == _sha1s(site, A)[0]
    assert observe_dump(cfg) == f"enwiki/{A}:" + ":".join(_sha1s(site, A))


def test_server_errors_are_transient_missing_wiki_is_not(site):
    site.fail_next = [503]
    with pytest.raises(DownloadError) as info:
        dumpsite.resolve_latest(site.url, "enwiki")
    assert is_transient(info.value)
    site.fail_next = [429]
    with pytest.raises(DownloadError) as info:
        dumpsite.resolve_latest(site.url, "enwiki")
    assert is_transient(info.value)
    with pytest.raises(DownloadError) as info:
        dumpsite.resolve_latest(site.url, "dewiki")  # 404: no such wiki on this site
    assert not is_transient(info.value)

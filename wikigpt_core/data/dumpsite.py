"""The dump site (dumps.wikimedia.org or a mirror): which dumps exist, which are finished, and
a dump's identity.

Layout read here, as the site publishes it:
- `<base>/<wiki>/`: a directory listing with one `YYYYMMDD/` link per dump run;
- `<base>/<wiki>/<date>/dumpstatus.json`: `{"jobs": {job: {"status": "done"|"in-progress"|...,
  "files": {name: {...}}}}}`. The multistream file and its index come from the job
  `articlesmultistreamdump` (small wikis) or `articlesmultistreamdumprecombine` (large wikis,
  whose multistream is first written in pieces);
- `<base>/<wiki>/<date>/<wiki>-<date>-sha1sums.txt`: the published SHA-1 of every file.

A dump is *finished* when every job that lists the multistream file or its index reports
`done` and the sums file names both. Its identity is `<wiki>/<date>:<sha1 xml>:<sha1 index>`:
it changes when a new date finishes, or if the site ever republished different bytes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from wikigpt_core.data.download import fetch_text, parse_sha1sums
from wikigpt_core.data.errors import DownloadError
from wikigpt_core.data.sources import multistream_names

MULTISTREAM_JOBS = ("articlesmultistreamdumprecombine", "articlesmultistreamdump")
LATEST = "latest"
_DATE_LINK = re.compile(r'href="(?:\./)?(\d{8})/?"')
MAX_DATES_CHECKED = 6
"""How many of the newest dump dates are looked at for a finished one (dumps run about twice a
month; a run in progress for weeks still leaves the previous one within reach)."""


@dataclass(frozen=True)
class FinishedDump:
    """A dump whose multistream file and index are published with their SHA-1."""

    wiki: str
    date: str
    xml_name: str
    xml_sha1: str
    index_name: str
    index_sha1: str

    @property
    def identity(self) -> str:
        return f"{self.wiki}/{self.date}:{self.xml_sha1}:{self.index_sha1}"


class DumpNotFinishedError(DownloadError):
    """The dump (or, for `latest`, every recent dump) is not finished yet."""


def wiki_url(base_url: str, wiki: str) -> str:
    return f"{base_url.rstrip('/')}/{wiki}/"


def date_url(base_url: str, wiki: str, date: str) -> str:
    return f"{base_url.rstrip('/')}/{wiki}/{date}/"


def sums_url(base_url: str, wiki: str, date: str) -> str:
    return date_url(base_url, wiki, date) + f"{wiki}-{date}-sha1sums.txt"


def list_dates(base_url: str, wiki: str, timeout: float = 30.0) -> list[str]:
    """Dump dates in the wiki's directory listing, newest first."""
    html = fetch_text(wiki_url(base_url, wiki), timeout=timeout)
    return sorted(set(_DATE_LINK.findall(html)), reverse=True)


def multistream_status(status: dict, wiki: str, date: str) -> str:
    """`done`, or the first non-done status of a job that writes the multistream file or its
    index (`missing` when no job lists them)."""
    names = set(multistream_names(wiki, date))
    jobs = status.get("jobs") or {}
    seen: set[str] = set()
    for job in MULTISTREAM_JOBS:
        info = jobs.get(job) or {}
        listed = names & set(info.get("files") or {})
        if not listed:
            continue
        if info.get("status") != "done":
            return str(info.get("status") or "unknown")
        seen |= listed
    return "done" if seen == names else "missing"


def finished_dump(base_url: str, wiki: str, date: str, timeout: float = 30.0) -> FinishedDump:
    """The dump of `date`, if finished; DumpNotFinishedError (or DownloadError) otherwise."""
    url = date_url(base_url, wiki, date) + "dumpstatus.json"
    try:
        status = json.loads(fetch_text(url, timeout=timeout))
    except json.JSONDecodeError as e:
        raise DownloadError(url, f"not valid JSON ({e})", "Check base_url points at a dump site.") from None
    state = multistream_status(status, wiki, date)
    xml_name, index_name = multistream_names(wiki, date)
    if state != "done":
        raise DumpNotFinishedError(url, f"the multistream files of {wiki}/{date} are {state}",
                                   f"Pick a finished date, or use {wiki}/latest.")
    sums = parse_sha1sums(fetch_text(sums_url(base_url, wiki, date), timeout=timeout))
    missing = [n for n in (xml_name, index_name) if n not in sums]
    if missing:
        raise DumpNotFinishedError(sums_url(base_url, wiki, date), f"no published SHA-1 for {missing}",
                                   "The dump may still be in progress; pick a finished dump date.")
    return FinishedDump(wiki, date, xml_name, sums[xml_name], index_name, sums[index_name])


def resolve_latest(base_url: str, wiki: str, timeout: float = 30.0) -> FinishedDump:
    """The newest dump of `wiki` whose multistream files are finished."""
    dates = list_dates(base_url, wiki, timeout)
    if not dates:
        raise DownloadError(wiki_url(base_url, wiki), f"lists no dump dates for {wiki}",
                            "Check the wiki name (e.g. enwiki, dewiki) and base_url.")
    waiting = []
    for date in dates[:MAX_DATES_CHECKED]:
        try:
            return finished_dump(base_url, wiki, date, timeout)
        except DumpNotFinishedError as e:
            waiting.append(f"{date}: {e.problem}")
    raise DumpNotFinishedError(wiki_url(base_url, wiki), "no finished dump among the newest "
                               f"{len(waiting)} ({'; '.join(waiting)})", "Try again later.")


def resolve(base_url: str, wiki: str, date: str, timeout: float = 30.0) -> FinishedDump:
    """`latest` → the newest finished dump; a date → that dump, which must be finished."""
    if date == LATEST:
        return resolve_latest(base_url, wiki, timeout)
    return finished_dump(base_url, wiki, date, timeout)

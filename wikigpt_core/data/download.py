"""HTTP download with range-resume and SHA-1 verification against published checksums.

The file grows as `<name>.part` in the work directory; after an interruption the next attempt
(or the next run) asks for `Range: bytes=<size>-` and appends. Only when the whole file's SHA-1
equals the published one is it renamed to its final name. A mismatch deletes the part file
(its bytes cannot be trusted) and raises ChecksumMismatchError.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx

from wikigpt_core.data.errors import ChecksumMismatchError, DownloadError, is_transient

_CHUNK = 1 << 20


def fetch_text(url: str, timeout: float = 30.0) -> str:
    try:
        r = httpx.get(url, timeout=timeout, follow_redirects=True)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise DownloadError(url, f"cannot fetch ({e})", "Check base_url and the network.",
                            transient=is_transient(e)) from None
    return r.text


def parse_sha1sums(text: str) -> dict[str, str]:
    """`<sha1>  <filename>` lines (the dump's *-sha1sums.txt) → {filename: sha1}."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and len(fields[0]) == 40:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    return sums


def _sha1_of(path: Path) -> "hashlib._Hash":
    h = hashlib.sha1()
    if path.exists():
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h


def download(url: str, dest: Path, sha1: str, *, retries: int = 5, timeout: float = 60.0,
             backoff_s: float = 0.5) -> dict[str, int]:
    """Fetch url to dest (resuming a `.part` file), verify sha1, rename into place.

    Returns {"bytes": n, "attempts": k, "resumed_from": first byte asked of the server}."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = _sha1_of(part)  # resume: hash what is already there
    resumed_from = part.stat().st_size if part.exists() else 0
    attempts = 0
    while True:
        attempts += 1
        have = part.stat().st_size if part.exists() else 0
        try:
            h = _fetch_once(url, part, have, h, timeout)
        except (httpx.HTTPError, OSError) as e:
            if isinstance(e, httpx.HTTPStatusError) and not is_transient(e):
                raise DownloadError(url, f"cannot download ({e})", "Check base_url and the dump name.") from None
            if attempts > retries:
                raise DownloadError(url, f"download failed after {attempts} attempts ({e})",
                                    f"Run again to resume from byte {part.stat().st_size if part.exists() else 0}.",
                                    transient=True) from None
            time.sleep(backoff_s * attempts)
            continue
        break
    actual = h.hexdigest()
    if actual != sha1.lower():
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(dest.name, sha1, actual)
    os.replace(part, dest)
    return {"bytes": dest.stat().st_size, "attempts": attempts, "resumed_from": resumed_from}


def _fetch_once(url: str, part: Path, have: int, h, timeout: float):
    """One request from byte `have`; returns the running hash (a fresh one if the server
    ignored Range and the file restarted from zero). Raises on a short read."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416 and have:  # nothing left to send: already complete
            return h
        r.raise_for_status()
        mode = "ab"
        if have and r.status_code != 206:  # server ignored Range: start over from byte 0
            mode, h = "wb", hashlib.sha1()
        expected = r.headers.get("content-length")
        got = 0
        with part.open(mode) as f:
            for chunk in r.iter_bytes():  # unbuffered: keep every byte that arrived
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
        if expected is not None and got < int(expected):
            raise httpx.RemoteProtocolError(f"connection closed after {got} of {expected} bytes")
    return h

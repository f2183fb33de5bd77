"""Typed errors for bad dump input. Each message names the file and says what to do."""
from __future__ import annotations

from pathlib import Path


class DumpError(ValueError):
    """Base class: the dump (or its index, or its download) cannot be used."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(_message(self.path, problem, hint))

    def __reduce__(self):
        # Subclasses take different __init__ arguments; rebuild from the finished message so
        # an error raised in a worker process crosses back to the parent intact.
        return (_restore, (type(self), self.path, self.problem, self.args, self.hint))

    def about_local_file(self, path: str | Path) -> DumpError:
        """The same error, naming the user's own file `path` (not the copy that was read), and
        telling them to replace it, where a downloaded file would be fetched again."""
        hint = LOCAL_FILE_HINT if self.hint == REFETCH_HINT else self.hint
        return _restore(type(self), str(path), self.problem, (_message(str(path), self.problem, hint),), hint)


def _message(path: str, problem: str, hint: str) -> str:
    return f"{path}: {problem}" + (f". {hint}" if hint else "")


def _restore(cls: type, path: str, problem: str, args: tuple, hint: str = "") -> DumpError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.path, err.problem, err.hint = path, problem, hint
    return err


REFETCH_HINT = "Delete it and fetch the dump again (materialize `wiki_dump`)."
"""For a file the pipeline downloaded."""
LOCAL_FILE_HINT = "The file itself is damaged: copy or download it again, then rerun `wiki_dump`."
"""For the user's own file (a local WIKIGPT_DUMP path)."""


class TruncatedDumpError(DumpError):
    """The bz2 data ends before its end-of-stream marker (an interrupted copy or download)."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        super().__init__(path, f"truncated bz2: the compressed data ends early{detail}", REFETCH_HINT)


class CorruptDumpError(DumpError):
    """The bytes are not valid bz2 data."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        super().__init__(path, f"corrupt bz2 data{detail}", REFETCH_HINT)


class CorruptXMLError(DumpError):
    """The decompressed text is not well-formed XML."""

    def __init__(self, path: str | Path, detail: str) -> None:
        super().__init__(path, f"corrupt XML ({detail})", REFETCH_HINT)


class EmptyDumpError(DumpError):
    """The file is empty or holds no <page> elements."""

    def __init__(self, path: str | Path, detail: str = "it holds no <page> elements") -> None:
        super().__init__(path, f"empty dump: {detail}", "Point WIKIGPT_DUMP at a real pages-articles dump.")


class NothingKeptError(DumpError):
    """Every page of the dump was skipped or filtered away: the stage has nothing to publish."""

    def __init__(self, path: str | Path, language: str, counts: dict[str, int]) -> None:
        why = ", ".join(f"{reason} {n}" for reason, n in counts.items() if n) or "no pages"
        super().__init__(
            path,
            f"no article kept for target language {language!r} ({why})",
            "If the dump is in another language, set CleanConfig.language (or check the dump name); "
            "else loosen the [clean] thresholds.",
        )


class NotMediaWikiError(DumpError):
    """Well-formed XML, but not a MediaWiki export (<mediawiki xmlns=...export-...>)."""

    def __init__(self, path: str | Path, found: str) -> None:
        super().__init__(
            path,
            f"not a MediaWiki XML export (root element is {found})",
            "Use a *-pages-articles*.xml.bz2 file from dumps.wikimedia.org.",
        )


class UnsupportedEncodingError(DumpError):
    """The XML is in a character encoding this reader does not take."""

    def __init__(self, path: str | Path, encoding: str, detail: str = "") -> None:
        super().__init__(
            path,
            f"the XML is encoded as {encoding}{detail}",
            f"Dumps from dumps.wikimedia.org are UTF-8; re-encode it "
            f"(`bzcat FILE | iconv -f {encoding} -t UTF-8 | bzip2 > FILE.utf8.xml.bz2`).",
        )


class IndexError_(DumpError):
    """Base for multistream index problems (named with a trailing _ to not shadow IndexError)."""


class MissingIndexError(IndexError_):
    def __init__(self, path: str | Path, expected: str | Path) -> None:
        super().__init__(
            path,
            f"multistream dump without its index (expected {expected})",
            "Put the matching *-multistream-index.txt.bz2 beside it, or use a single-stream dump.",
        )


class IndexMismatchError(IndexError_):
    def __init__(self, path: str | Path, detail: str) -> None:
        super().__init__(
            path,
            f"index does not match the dump: {detail}",
            "The index belongs to another dump date or the dump is damaged; fetch both again.",
        )


class DownloadError(DumpError):
    """An HTTP fetch from the dump site failed. `transient` says whether trying again later may
    succeed (network failure, timeout, HTTP 429 or 5xx) or not (404, a malformed reply)."""

    def __init__(self, path: str | Path, problem: str, hint: str = "", transient: bool = False) -> None:
        super().__init__(path, problem, hint)
        self.transient = transient

    def __reduce__(self):
        return (_restore_download, (type(self), self.path, self.problem, self.args, self.transient, self.hint))


def _restore_download(cls, path, problem, args, transient, hint=""):
    err = _restore(cls, path, problem, args, hint)
    err.transient = transient
    return err


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying later (network, timeouts, HTTP 429/5xx); False for bad
    input, which fails the same way every time (a truncated or corrupt dump, a missing index)."""
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    import httpx  # local: worker processes import this module and need no httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return transient_status(exc.response.status_code)
    return isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError))


def transient_status(code: int) -> bool:
    return code == 429 or 500 <= code < 600


class ChecksumMismatchError(DumpError):
    def __init__(self, path: str | Path, expected: str, actual: str) -> None:
        super().__init__(
            path,
            f"SHA-1 mismatch: published {expected}, downloaded file has {actual}",
            "The partial download was deleted; run the stage again (or try another mirror).",
        )

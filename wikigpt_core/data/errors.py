"""Typed errors for bad dump input. Each message names the file and says what to do."""
from __future__ import annotations

from pathlib import Path


class DumpError(ValueError):
    """Base class: the dump (or its index, or its download) cannot be used."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        msg = f"{self.path}: {problem}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __reduce__(self):
        # Subclasses take different __init__ arguments; rebuild from the finished message so
        # an error raised in a worker process crosses back to the parent intact.
        return (_restore, (type(self), self.path, self.problem, self.args))


def _restore(cls: type, path: str, problem: str, args: tuple) -> DumpError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.path, err.problem = path, problem
    return err


_REFETCH = "Delete it and fetch the dump again (materialize `wiki_dump`)."


class TruncatedDumpError(DumpError):
    """The bz2 data ends before its end-of-stream marker (an interrupted copy or download)."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        super().__init__(path, f"truncated bz2: the compressed data ends early{detail}", _REFETCH)


class CorruptDumpError(DumpError):
    """The bytes are not valid bz2 data."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        super().__init__(path, f"corrupt bz2 data{detail}", _REFETCH)


class CorruptXMLError(DumpError):
    """The decompressed text is not well-formed XML."""

    def __init__(self, path: str | Path, detail: str) -> None:
        super().__init__(path, f"corrupt XML ({detail})", _REFETCH)


class EmptyDumpError(DumpError):
    """The file is empty or holds no <page> elements."""

    def __init__(self, path: str | Path, detail: str = "it holds no <page> elements") -> None:
        super().__init__(path, f"empty dump: {detail}", "Point WIKIGPT_DUMP at a real pages-articles dump.")


class NotMediaWikiError(DumpError):
    """Well-formed XML, but not a MediaWiki export (<mediawiki xmlns=...export-...>)."""

    def __init__(self, path: str | Path, found: str) -> None:
        super().__init__(
            path,
            f"not a MediaWiki XML export (root element is {found})",
            "Use a *-pages-articles*.xml.bz2 file from dumps.wikimedia.org.",
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
    """The HTTP download failed after all retries."""


class ChecksumMismatchError(DumpError):
    def __init__(self, path: str | Path, expected: str, actual: str) -> None:
        super().__init__(
            path,
            f"SHA-1 mismatch: published {expected}, downloaded file has {actual}",
            "The partial download was deleted; run the stage again (or try another mirror).",
        )

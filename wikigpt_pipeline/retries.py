"""Retry only what can succeed on a second try.

A stage's RetryPolicy (network stages: `wiki_dump`, the teacher stages) is meant for transient
failures: network errors, timeouts, HTTP 429 and 5xx. A bad local file (a truncated bz2, corrupt,
empty or wrong-encoding XML, a missing index) fails the same way every time, so retrying it only
makes the user wait for an error the first attempt already knew. `retry_transient_only` turns
every non-transient error into `dg.Failure(allow_retries=False)`, which Dagster does not retry
whatever the policy says; transient errors propagate unchanged and the policy retries them.

What counts as transient (`is_transient`): an error whose `transient` attribute is True (the
dump site's `DownloadError` sets it from the HTTP status or network failure), the teacher
client's `RetryableError`, httpx network/timeout errors and HTTP 429/5xx, Python's
TimeoutError/ConnectionError; anything else is deterministic. The cause chain is followed, so
`raise StageError(...) from httpx.ConnectTimeout(...)` is transient too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from wikigpt_core.data.errors import is_transient as _is_transient_here

NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                               jitter=dg.Jitter.PLUS_MINUS)
"""For stages that talk to the network; deterministic errors bypass it (see above)."""


def is_transient(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _is_transient_here(e) or _is_retryable_teacher_error(e):
            return True
        if getattr(e, "transient", None) is False:
            return False  # the error says so itself; do not second-guess it from its cause
        e = e.__cause__
    return False


def _is_retryable_teacher_error(exc: BaseException) -> bool:
    try:
        from wikigpt_core.llm.client import RetryableError
    except ImportError:  # the teacher client is optional to this module
        return False
    return isinstance(exc, RetryableError)


@contextlib.contextmanager
def retry_transient_only(stage: str) -> Iterator[None]:
    """Wrap a stage body: deterministic errors fail the step at once, without retries."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as e:
        if is_transient(e):
            raise
        raise dg.Failure(
            description=f"{stage}: {e}",
            metadata={"error": type(e).__name__, "retried": "no: the same input fails the same way"},
            allow_retries=False,
        ) from e

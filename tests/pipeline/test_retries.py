"""Which errors a stage's retry policy may retry: transient ones only."""
from __future__ import annotations

import dagster as dg
import httpx
import pytest

from wikigpt_core.data.errors import DownloadError, MissingIndexError, TruncatedDumpError
from wikigpt_core.llm.client import ChatClient, Completion, RetryableError, TeacherError
from wikigpt_pipeline.retries import is_transient, retry_transient_only


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/x")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


def test_transient_errors():
    assert is_transient(httpx.ConnectTimeout("slow"))
    assert is_transient(_status_error(503)) and is_transient(_status_error(429))
    assert is_transient(DownloadError("u", "down", transient=True))
    assert is_transient(RetryableError("502 from the teacher"))
    try:
        raise RuntimeError("stage failed") from httpx.ReadTimeout("slow")
    except RuntimeError as e:
        assert is_transient(e)  # the cause decides


def test_deterministic_errors():
    assert not is_transient(_status_error(404))
    assert not is_transient(DownloadError("u", "no such dump"))
    assert not is_transient(TruncatedDumpError("enwiki.xml.bz2"))
    assert not is_transient(MissingIndexError("enwiki-multistream.xml.bz2", "index.txt.bz2"))
    assert not is_transient(ValueError("bad config"))


def test_bad_input_becomes_a_failure_dagster_does_not_retry():
    with pytest.raises(dg.Failure) as info:
        with retry_transient_only("wiki_dump"):
            raise TruncatedDumpError("enwiki.xml.bz2")
    assert info.value.allow_retries is False and "truncated" in info.value.description
    with pytest.raises(httpx.ConnectError):  # transient: left for the retry policy
        with retry_transient_only("wiki_dump"):
            raise httpx.ConnectError("refused")


def test_teacher_batch_failure_is_transient_only_when_every_failure_was():
    class Down:
        backend_id = "openai:test"

    client = ChatClient.__new__(ChatClient)  # only check_health's state is needed
    client.backend, client.last_error = Down(), "503"
    with pytest.raises(TeacherError) as info:
        client.check_health([RetryableError("503")] * 3 + [Completion("ok")], "sft_dataset")
    assert is_transient(info.value)
    with pytest.raises(TeacherError) as info:
        client.check_health([TeacherError("401 bad key")] * 3, "sft_dataset")
    assert not is_transient(info.value)

"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1.

The server below speaks the `/v1/chat/completions` protocol (JSON in, `choices[0].message.
content` + `usage` out). Its "model" is the offline rule set, so the replies are the real
JSON a teacher/judge returns. It can be told to fail chosen requests with HTTP 500.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wikigpt_core.align.teacher import ExampleSpec, Teacher
from wikigpt_core.llm import offline
from wikigpt_core.llm.client import Failure, TeacherAuthError, TeacherError, make_client
from wikigpt_core.llm.judge import Judge, JudgeItem
from wikigpt_core.llm.prompts import judge_request
from wikigpt_core.config import TeacherConfig

PASSAGE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. "
           "The tower was completed in 1889 for the World's Fair. It was designed by the company "
           "of Gustave Eiffel and is about 330 metres tall.")
SECRET = "sk-test-secret-value-123"


class ChatServer:
    """A small OpenAI-compatible chat server; records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.fail_on: set[int] = set()  # 1-based request numbers answered with HTTP 500
        self.refuse_with: int | None = None  # answer every request with this status (401, 403)
        self.delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    self._answer(body, n)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body: dict, n: int) -> None:
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if server.refuse_with:  # a careless server that echoes the key it refused
                    return self._send(server.refuse_with, {"error": {
                        "message": f"invalid key: {self.headers.get('Authorization')}"}})
                if n in server.fail_on:
                    return self._send(500, {"error": {"message": "injected failure"}})
                if body.get("model") != "test-teacher":
                    return self._send(400, {"error": {"message": f"unknown model {body.get('model')}"}})
                out = offline.reply(body)
                self._send(200, {
                    "id": f"cmpl-{n}", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": out["text"]}}],
                    "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
                              "total_tokens": out["prompt_tokens"] + out["completion_tokens"]},
                })

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def _cfg(url: str, **kw) -> TeacherConfig:
    return TeacherConfig(backend="openai", base_url=url, model="test-teacher", concurrency=4,
                         max_retries=3, retry_backoff_s=0.01, timeout_s=10, **kw)


def _specs() -> list[ExampleSpec]:
    return ([ExampleSpec("qa", "Eiffel Tower", PASSAGE, v) for v in range(3)]
            + [ExampleSpec("summarize", "Eiffel Tower", PASSAGE, 0, "Summarize the passage."),
               ExampleSpec("extract", "Eiffel Tower", PASSAGE, 0, "List every year mentioned in the passage.")])


def test_teacher_and_judge_over_http_retry_then_cache(server: ChatServer, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", SECRET)
    cache = tmp_path / "cache"
    server.fail_on = {3}  # the third request of the batch fails once, mid-batch
    server.delay_s = 0.05  # slow enough that concurrent requests overlap

    client = make_client(_cfg(server.url), cache)
    teacher, judge = Teacher(client), Judge(client)
    examples = teacher.write_examples(_specs())
    items = [JudgeItem("Answer the question using the passage.\n\n" + PASSAGE + "\n\nQuestion: When was it completed?",
                       "1889.", "It was completed in 1066 1066 1066 1066.", reference="1889"),
             JudgeItem("Question: When was it completed?", "Paris. [cut off]", "1889.", reference="1889")]
    verdicts = judge.compare(items)

    # Every request got through, one of them on its second attempt.
    assert not any(isinstance(e, Failure) for e in examples)
    assert examples[0]["answer"] and examples[0]["answer"].lower() in PASSAGE.lower()
    assert examples[4]["items"] == ["1889"]
    assert [v.winner for v in verdicts] == ["A", "B"]
    n_logical = len(_specs()) + len(items)
    assert len(server.requests) == n_logical + 1
    assert client.usage.requests == n_logical + 1 and client.usage.retries == 1
    assert client.usage.failures == 0 and client.usage.cache_hits == 0
    assert client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0
    assert client.usage.seconds > 0
    # Requests really ran in parallel, never more than teacher.concurrency at once.
    assert 1 < server.max_in_flight <= 4
    # The key travels in the header only; the cache on disk never holds it.
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    # Constrained decoding is on by default: each request carries its reply's schema.
    assert all(r["response_format"]["type"] == "json_schema" and r["model"] == "test-teacher"
               and r["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
               for r in server.requests)
    assert all(SECRET not in p.read_text() for p in cache.rglob("*.json"))

    # A rerun (fresh client, same cache) is answered entirely from the cache: zero requests.
    before = len(server.requests)
    client2 = make_client(_cfg(server.url), cache)
    examples2 = Teacher(client2).write_examples(_specs())
    verdicts2 = Judge(client2).compare(items)
    assert len(server.requests) == before
    assert client2.usage.requests == 0 and client2.usage.cache_hits == n_logical
    assert examples2 == examples and verdicts2 == verdicts


def test_a_request_that_keeps_failing_is_dropped_and_the_batch_survives(server: ChatServer, tmp_path: Path):
    server.fail_on = {3, 4, 5, 6}  # sequential client: request 3 and all three of its retries fail
    cfg = _cfg(server.url)
    cfg.concurrency = 1
    client = make_client(cfg, tmp_path / "cache")
    out = Teacher(client).write_examples(_specs())
    assert [isinstance(o, Failure) for o in out] == [False, False, True, False, False]
    assert out[2].reason == "request_failed" and "HTTP 500" in out[2].detail
    assert len(server.requests) == 5 + 3 and client.usage.retries == 3 and client.usage.failures == 1
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 4  # failures are never cached


def test_endpoint_down_fails_the_stage_with_a_clear_error(server: ChatServer, tmp_path: Path):
    server.fail_on = set(range(1, 100))
    client = make_client(_cfg(server.url), tmp_path / "cache")
    with pytest.raises(TeacherError, match=r"2 of 2 requests .* failed; last error: .*HTTP 500"):
        Teacher(client).write_examples(_specs()[:2])
    assert len(server.requests) == 2 * (1 + 3)  # first try + max_retries, per request


def test_client_error_is_not_retried(server: ChatServer, tmp_path: Path):
    cfg = _cfg(server.url)
    cfg.model = "no-such-model"  # the server answers 400
    client = make_client(cfg, tmp_path / "cache")
    with pytest.raises(TeacherError, match="HTTP 400"):
        Teacher(client).write_examples(_specs()[:2])
    assert len(server.requests) == 2 and client.usage.retries == 0 and client.usage.failures == 2


def test_unreachable_endpoint_is_retried_then_reported(tmp_path: Path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(_cfg(f"http://127.0.0.1:{port}/v1"), tmp_path / "cache")
    with pytest.raises(TeacherError, match="ConnectError"):
        Judge(client).compare([JudgeItem("q", "a", "b")])
    assert client.usage.requests == 4 and client.usage.failures == 1


def test_identical_requests_in_a_batch_are_sent_once(server: ChatServer, tmp_path: Path):
    client = make_client(_cfg(server.url), None)  # no cache: deduplication alone
    out = Teacher(client).write_examples(_specs()[:1] * 3)
    assert out[0] == out[1] == out[2] and not isinstance(out[0], Failure)
    assert len(server.requests) == 1


def test_the_test_server_speaks_the_protocol_of_the_official_openai_client(server: ChatServer):
    """The server above is what the backend is tested against; the official client accepts it,
    so the backend's requests and parsing follow the real protocol."""
    import openai  # in the project's test extra

    client = openai.OpenAI(base_url=server.url, api_key="sk-x", max_retries=0)
    r = client.chat.completions.create(model="test-teacher", messages=[
        {"role": "user", "content": judge_request("Q: When?", "1889.", "[cut off]", "1889")}])
    scores = json.loads(r.choices[0].message.content)
    assert scores["score_b"] == 1.0 and scores["score_a"] > scores["score_b"]
    assert r.usage.prompt_tokens > 0 and server.auth_headers[-1] == "Bearer sk-x"


def test_request_cap_stops_sending(server: ChatServer, tmp_path: Path):
    cfg = _cfg(server.url)
    cfg.concurrency = 1
    client = make_client(cfg, None, max_requests=3)
    out = Teacher(client).write_examples(_specs())
    assert len(server.requests) == 3 and client.usage.requests == 3 and client.cap_reached
    assert [isinstance(o, Failure) and o.reason == "request_cap" for o in out] == [False] * 3 + [True] * 2


def test_json_schema_mode_sends_each_replys_schema(server: ChatServer):
    cfg = _cfg(server.url, json_schema=True, schema_format="json_object", max_reply_chars=77)
    Teacher(make_client(cfg, None)).write_examples(_specs()[3:])  # summarize, extract
    formats = [r["response_format"] for r in server.requests]
    assert [f["type"] for f in formats] == ["json_object", "json_object"]
    summ, extract = sorted((f["schema"] for f in formats), key=lambda sch: len(sch["required"]))
    assert summ["required"] == ["response"] and summ["properties"]["response"]["maxLength"] == 77
    assert extract["required"] == ["items", "response"] and extract["properties"]["items"]["type"] == "array"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_at_the_first_request_and_names_the_key_variable(
        server: ChatServer, tmp_path: Path, monkeypatch, status: int):
    """A wrong key is not transient: the first request goes alone, its 401/403 stops the batch,
    nothing else is sent, and the error names the variable to fix without echoing the body."""
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", SECRET)
    server.refuse_with = status
    server.delay_s = 0.05  # concurrent requests would overlap, had any been sent
    client = make_client(_cfg(server.url), tmp_path / "cache")  # concurrency 4, 3 retries
    with pytest.raises(TeacherAuthError) as refused:
        Teacher(client).write_examples(_specs())
    assert len(server.requests) == 1 and client.usage.requests == 1 and client.usage.retries == 0
    message = str(refused.value)
    assert f"HTTP {status}" in message and "WIKIGPT_TEACHER_API_KEY" in message
    assert SECRET not in message and "invalid key" not in message  # the body is never quoted
    assert refused.value.transient is False  # the stage's retry policy does not retry it
    # The same client sends nothing more: a later batch fails at once, without a request.
    with pytest.raises(TeacherAuthError):
        Judge(client).compare([JudgeItem("q", "a", "b")])
    assert len(server.requests) == 1
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_error_messages_never_quote_the_response_body(server: ChatServer, tmp_path: Path, monkeypatch):
    """A 4xx or 5xx body may echo what the request carried; the message says status and hint only."""
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", SECRET)
    server.fail_on = {1}  # the first request, which goes alone
    cfg = _cfg(server.url)
    cfg.max_retries = 0
    out = Teacher(make_client(cfg, None)).write_examples(_specs())
    assert out[0].reason == "request_failed" and "HTTP 500" in out[0].detail
    assert "injected failure" not in out[0].detail

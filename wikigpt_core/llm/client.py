"""The client every teacher and judge request goes through.

    ChatClient   cache first, then bounded concurrent calls with retries, a hard request cap,
      ↓          usage and time accounting
    backend      OfflineBackend | OpenAIBackend (`backends.py`): one chat completion per call

Only transient failures (`RetryableError`: network errors, timeouts, HTTP 429 and 5xx) are
retried, with exponential backoff; any other error fails that request at once. A refused key
(`TeacherAuthError`: HTTP 401/403) fails the whole batch at once: no request is sent after it,
and the first request a client sends goes alone, so a wrong key costs one request, not a batch.
A request whose reply is in the cache is never sent again and costs nothing.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wikigpt_core.config import TeacherConfig
from wikigpt_core.llm.cache import ResponseCache, request_key
from wikigpt_core.llm.contract import (ChatBackend, Completion, RetryableError, TeacherAuthError,
                                       TeacherError)
from wikigpt_core.llm.prompts import REPLY_FIELDS, ReplyFormatError, parse_json_reply, reply_schema


class RequestCapReached(TeacherError):
    """The stage's request cap was spent before this request could be sent."""


@dataclass
class TeacherUsage:
    """What the backend cost: requests actually sent (retries included), cache hits, tokens."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_stats(self, prefix: str = "teacher_") -> dict[str, float | int]:
        return {f"{prefix}{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Failure:
    """A reply that did not become an item, and why."""

    reason: str
    """request_failed, bad_reply, or the name of the filter that dropped it."""
    detail: str = ""
    """The error message or the reply text (truncated by whoever shows it; never a secret)."""


def parse_reply(result: Completion | TeacherError, kind: str) -> dict[str, Any] | Failure:
    """The JSON object a `kind` reply must be, or the Failure it ended as."""
    if isinstance(result, TeacherError):
        return Failure("request_cap" if isinstance(result, RequestCapReached) else "request_failed", str(result))
    try:
        return parse_json_reply(result.text, REPLY_FIELDS[kind])
    except ReplyFormatError as e:
        return Failure("bad_reply", str(e))


class ChatClient:
    """Runs many requests against a backend: cache first, then bounded concurrent calls with
    retries. `max_requests` caps what is sent in all (retries included); a request beyond the
    cap is not sent and ends as `RequestCapReached`."""

    def __init__(self, backend: ChatBackend, *, model: str, cache_dir: Path | None,
                 concurrency: int = 8, max_retries: int = 4, backoff_s: float = 1.0,
                 max_tokens: int = 512, temperature: float = 0.0, json_mode: bool = False,
                 json_schema: bool = False, schema_format: str = "json_schema",
                 max_reply_chars: int = 1_200, max_requests: int | None = None) -> None:
        self.backend = backend
        self.model = model
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.json_mode = json_mode
        self.json_schema = json_schema
        self.schema_format = schema_format
        self.max_reply_chars = max_reply_chars
        self.max_requests = max_requests
        self.usage = TeacherUsage()
        self.last_error = ""
        self._lock = threading.Lock()
        self._sent_one = False
        """Whether a request has reached the backend: until then requests go one at a time."""
        self._refused: TeacherAuthError | None = None
        """The endpoint refused the key: nothing more is sent."""

    @property
    def cap_reached(self) -> bool:
        return self.max_requests is not None and self.usage.requests >= self.max_requests

    def body(self, content: str, seed: int = 0, kind: str = "") -> dict[str, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature, "seed": seed}
        if self.json_schema and kind:
            # Constrained decoding to the reply's schema (teacher.schema_format).
            schema = reply_schema(kind, self.max_reply_chars)
            if self.schema_format == "json_object":  # llama-cpp-python's server
                body["response_format"] = {"type": "json_object", "schema": schema}
            else:  # OpenAI structured outputs: vLLM, llama-server, OpenAI
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": f"wikigpt_{kind}", "schema": schema}}
        elif self.json_mode:
            body["response_format"] = {"type": "json_object"}  # every reply we ask for is JSON
        return body

    def complete_many(self, contents: list[str], seeds: list[int] | None = None,
                      kinds: list[str] | None = None) -> list[Completion | TeacherError]:
        """One result per prompt, in order: a Completion, or the TeacherError it ended with.
        `kinds` names each request's kind (see `prompts.REPLY_FIELDS`) for schema decoding.
        Raises TeacherAuthError when the endpoint refused the key."""
        t0 = time.perf_counter()
        seeds = seeds or [0] * len(contents)
        kinds = kinds or [""] * len(contents)
        bodies = [self.body(c, s, k) for c, s, k in zip(contents, seeds, kinds)]
        # Identical requests in one batch are sent once and share the reply.
        keys = [request_key(self.backend.backend_id, b) for b in bodies]
        todo = list(dict(zip(keys, bodies)).items())
        done: dict[str, Completion | TeacherError] = {}
        # Until one request has reached the endpoint, send one at a time (cache hits pass by):
        # a wrong key or URL is found by one request, not by `concurrency` of them.
        while todo and not self._sent_one and self._refused is None:
            key, body = todo.pop(0)
            done[key] = self._one(key, body)
        if todo:
            todo_keys, todo_bodies = zip(*todo)
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                done.update(zip(todo_keys, pool.map(self._one, todo_keys, todo_bodies)))
        with self._lock:
            self.usage.seconds += time.perf_counter() - t0
        if self._refused is not None:
            raise self._refused
        return [done[k] for k in keys]

    def _one(self, key: str, body: dict[str, Any]) -> Completion | TeacherError:
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            with self._lock:
                self.usage.cache_hits += 1
            return Completion(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0))
        for attempt in range(self.max_retries + 1):
            with self._lock:
                if self._refused is not None:
                    return self._refused
                if self.cap_reached:
                    return RequestCapReached(f"request cap of {self.max_requests} reached; not sent")
                self.usage.requests += 1
                self.usage.retries += attempt > 0
            try:
                c = self._send(body)
            except TeacherAuthError as e:
                with self._lock:
                    self._refused = self._refused or e
                return self._failed(e)
            except RetryableError as e:
                if attempt == self.max_retries:
                    return self._failed(e)
                # Exponential backoff with jitter, so many workers do not retry in lockstep.
                time.sleep(self.backoff_s * (2 ** attempt) * (1 + 0.25 * random.random()))
                continue
            except TeacherError as e:
                return self._failed(e)
            with self._lock:
                self.usage.prompt_tokens += c.prompt_tokens
                self.usage.completion_tokens += c.completion_tokens
            if self.cache is not None:
                self.cache.put(key, asdict(c))
            return c
        raise AssertionError("unreachable")

    def _send(self, body: dict[str, Any]) -> Completion:
        """One call to the backend, whatever its outcome marks the endpoint as reached."""
        try:
            return self.backend.complete(body)
        finally:
            self._sent_one = True

    def _failed(self, e: TeacherError) -> TeacherError:
        with self._lock:
            self.usage.failures += 1
            self.last_error = str(e)
        return e

    def check_health(self, results: list[Completion | TeacherError], what: str, max_failed: float = 0.5) -> None:
        """Raise when more than `max_failed` of a batch failed: an endpoint that is down or
        misconfigured must fail the stage (and let it retry), not publish a thinned-out dataset."""
        errors = [r for r in results if isinstance(r, TeacherError) and not isinstance(r, RequestCapReached)]
        failed = len(errors)
        if results and failed / len(results) > max_failed:
            err = TeacherError(f"{what}: {failed} of {len(results)} requests to the "
                               f"{self.backend.backend_id} teacher failed; last error: {self.last_error}")
            # An endpoint that was down or overloaded (every failure a spent retry of a network
            # error, 429 or 5xx) may be back later: the stage's retry policy may try again.
            err.transient = all(isinstance(e, RetryableError) for e in errors)
            raise err


def make_client(cfg: TeacherConfig, cache_dir: Path | None, *,
                max_requests: int | None = None) -> ChatClient:
    """The client `cfg` describes (a launched endpoint arrives as `cfg.base_url`);
    `max_requests` caps what the client sends."""
    from wikigpt_core.llm.backends import OfflineBackend, OpenAIBackend

    if cfg.backend == "offline":
        backend: ChatBackend = OfflineBackend()
        model = OfflineBackend.model
    elif cfg.backend == "openai":
        backend = OpenAIBackend(cfg.base_url, cfg.model, timeout_s=cfg.timeout_s,
                                api_key_env=cfg.api_key_env, max_connections=cfg.concurrency)
        model = cfg.model
    else:
        raise ValueError(f"teacher.backend is {cfg.backend!r}; use 'offline' or 'openai'")
    remote = cfg.backend == "openai"
    return ChatClient(backend, model=model, cache_dir=cache_dir, concurrency=cfg.concurrency,
                      max_retries=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                      max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                      json_mode=cfg.json_mode and remote, json_schema=cfg.json_schema and remote,
                      schema_format=cfg.schema_format, max_reply_chars=cfg.max_reply_chars,
                      max_requests=max_requests)

"""Teacher and judge: one interface, two backends.

    backend (chat completion of one request)      OfflineBackend | OpenAIBackend
      ↑
    ChatClient   bounded concurrency, retry with backoff, on-disk cache, usage and time
      ↑
    Teacher.write_examples / write_false_premise      Judge.compare

`OpenAIBackend` talks to any OpenAI-compatible `/v1/chat/completions` endpoint (by default
vLLM serving Qwen2.5-7B-Instruct, see `sky/teacher.yaml`) over httpx. `OfflineBackend` is the
deterministic rule-based teacher/judge of `offline.py`. Both receive the same prompts, so the
stages above never know which one runs. The API key comes from the environment only and is
never logged or written (the cache key covers the request body, not the headers).
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from wikigpt_core.align import offline, prompts
from wikigpt_core.align.cache import ResponseCache, request_key
from wikigpt_core.config import TeacherConfig


class TeacherError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable error)."""


class RetryableError(TeacherError):
    """A transient failure (5xx, 429, timeout, connection): worth another try."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


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


class ChatBackend(Protocol):
    backend_id: str
    """Identity folded into the cache key (backend kind + model), never a secret."""

    def complete(self, body: dict[str, Any]) -> Completion: ...


class OfflineBackend:
    """The built-in deterministic teacher/judge (no network)."""

    model = "wikigpt-offline-rules-v1"
    backend_id = f"offline:{model}"

    def complete(self, body: dict[str, Any]) -> Completion:
        try:
            out = offline.reply(body)
        except (KeyError, prompts.ReplyFormatError) as e:
            raise TeacherError(f"offline teacher cannot answer this request: {e}") from None
        return Completion(out["text"], out["prompt_tokens"], out["completion_tokens"])


class OpenAIBackend:
    """POST {base_url}/chat/completions on an OpenAI-compatible server (vLLM, OpenAI, ...)."""

    def __init__(self, base_url: str, model: str, *, timeout_s: float = 120.0,
                 api_key_env: str = "WIKIGPT_TEACHER_API_KEY", max_connections: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.backend_id = f"openai:{self.base_url}:{model}"
        key = os.environ.get(api_key_env) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(timeout=timeout_s, headers=headers, limits=limits)

    def complete(self, body: dict[str, Any]) -> Completion:
        url = f"{self.base_url}/chat/completions"
        try:
            r = self._http.post(url, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise RetryableError(f"{url}: {type(e).__name__}") from None
        if r.status_code == 429 or r.status_code >= 500:
            raise RetryableError(f"{url} answered HTTP {r.status_code}")
        if r.status_code != 200:
            raise TeacherError(
                f"{url} answered HTTP {r.status_code}: {r.text[:200]!r}; check teacher.base_url, "
                f"teacher.model ({self.model!r}) and the API key env var")
        try:
            data = r.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError(f"{url} sent a malformed completion: {r.text[:120]!r}") from None
        usage = data.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    def close(self) -> None:
        self._http.close()


class ChatClient:
    """Runs many requests against a backend: cache first, then bounded concurrent calls with
    retries. A request whose reply is in the cache is never sent again."""

    def __init__(self, backend: ChatBackend, *, model: str, cache_dir: Path | None,
                 concurrency: int = 8, max_retries: int = 4, backoff_s: float = 1.0,
                 max_tokens: int = 512, temperature: float = 0.0, json_mode: bool = False) -> None:
        self.backend = backend
        self.model = model
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.json_mode = json_mode
        self.usage = TeacherUsage()
        self.last_error = ""
        self._lock = threading.Lock()

    def body(self, content: str, seed: int = 0) -> dict[str, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature, "seed": seed}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}  # every reply we ask for is JSON
        return body

    def complete_many(self, contents: list[str], seeds: list[int] | None = None) -> list[Completion | TeacherError]:
        """One result per prompt, in order: a Completion, or the TeacherError it ended with."""
        t0 = time.perf_counter()
        seeds = seeds or [0] * len(contents)
        bodies = [self.body(c, s) for c, s in zip(contents, seeds)]
        # Identical requests in one batch are sent once and share the reply.
        keys = [request_key(self.backend.backend_id, b) for b in bodies]
        unique = dict(zip(keys, bodies))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            done = dict(zip(unique, pool.map(self._one, unique.keys(), unique.values())))
        with self._lock:
            self.usage.seconds += time.perf_counter() - t0
        return [done[k] for k in keys]

    def _one(self, key: str, body: dict[str, Any]) -> Completion | TeacherError:
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            with self._lock:
                self.usage.cache_hits += 1
            return Completion(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0))
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.usage.requests += 1
                self.usage.retries += attempt > 0
            try:
                c = self.backend.complete(body)
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

    def _failed(self, e: TeacherError) -> TeacherError:
        with self._lock:
            self.usage.failures += 1
            self.last_error = str(e)
        return e

    def check_health(self, results: list[Completion | TeacherError], what: str, max_failed: float = 0.5) -> None:
        """Raise when more than `max_failed` of a batch failed: an endpoint that is down or
        misconfigured must fail the stage (and let it retry), not publish a thinned-out dataset."""
        failed = sum(isinstance(r, TeacherError) for r in results)
        if results and failed / len(results) > max_failed:
            raise TeacherError(f"{what}: {failed} of {len(results)} requests to the "
                               f"{self.backend.backend_id} teacher failed; last error: {self.last_error}")


@dataclass(frozen=True)
class ExampleSpec:
    """One example to write: a task over a passage; `variant` selects a different fact/angle."""

    task: str
    title: str
    passage: str
    variant: int = 0
    instruction: str = ""
    passage_id: int = -1
    """Provenance only; not part of the request."""


@dataclass(frozen=True)
class FalsePremiseSpec:
    question: str
    reason: str
    context: str = ""


@dataclass(frozen=True)
class JudgeItem:
    question: str
    """The user message the responses answer (passage included when there is one)."""
    response_a: str
    response_b: str
    reference: str = ""
    """A reference answer, when known (the gold answer of a held-out example)."""


@dataclass(frozen=True)
class Verdict:
    score_a: float
    score_b: float
    winner: str = field(init=False)

    def __post_init__(self) -> None:
        w = "A" if self.score_a > self.score_b else "B" if self.score_b > self.score_a else "tie"
        object.__setattr__(self, "winner", w)


_EXAMPLE_FIELDS = {
    "qa": {"question": str, "answer": str, "response": str},
    "summarize": {"response": str},
    "extract": {"items": list, "response": str},
}


class Teacher:
    """Writes SFT examples and false-premise contrasts. Replies that cannot be parsed, or whose
    request failed, come back as None (counted by the caller as a filter drop); a batch where
    most requests failed raises TeacherError."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    @property
    def usage(self) -> TeacherUsage:
        return self.client.usage

    def write_examples(self, specs: list[ExampleSpec]) -> list[dict[str, Any] | None]:
        reqs = [prompts.example_request(s.task, s.title, s.passage, s.variant, s.instruction) for s in specs]
        results = self.client.complete_many(reqs, seeds=[s.variant for s in specs])
        self.client.check_health(results, "writing examples")
        return [_parse(r, _EXAMPLE_FIELDS[s.task]) for s, r in zip(specs, results)]

    def write_false_premise(self, specs: list[FalsePremiseSpec]) -> list[dict[str, Any] | None]:
        reqs = [prompts.false_premise_request(s.question, s.reason, s.context) for s in specs]
        results = self.client.complete_many(reqs)
        self.client.check_health(results, "writing false-premise contrasts")
        return [_parse(r, {"refusal": str, "invented": str}) for r in results]


class Judge:
    """Scores two responses in the order given. Position debiasing (judging both orders) is the
    caller's job: see `wikigpt_core.eval.pairwise`."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    @property
    def usage(self) -> TeacherUsage:
        return self.client.usage

    def compare(self, items: list[JudgeItem]) -> list[Verdict | None]:
        reqs = [prompts.judge_request(i.question, i.response_a, i.response_b, i.reference) for i in items]
        results = self.client.complete_many(reqs)
        self.client.check_health(results, "judging")
        out: list[Verdict | None] = []
        for r in results:
            obj = _parse(r, {"score_a": float, "score_b": float})
            out.append(Verdict(obj["score_a"], obj["score_b"]) if obj else None)
        return out


def _parse(result: Completion | TeacherError, fields: dict[str, type]) -> dict[str, Any] | None:
    if isinstance(result, TeacherError):
        return None
    try:
        return prompts.parse_json_reply(result.text, fields)
    except prompts.ReplyFormatError:
        return None


def make_client(cfg: TeacherConfig, cache_dir: Path | None) -> ChatClient:
    if cfg.backend == "offline":
        backend: ChatBackend = OfflineBackend()
        model = OfflineBackend.model
    elif cfg.backend == "openai":
        backend = OpenAIBackend(cfg.base_url, cfg.model, timeout_s=cfg.timeout_s,
                                api_key_env=cfg.api_key_env, max_connections=cfg.concurrency)
        model = cfg.model
    else:
        raise ValueError(f"teacher.backend is {cfg.backend!r}; use 'offline' or 'openai'")
    return ChatClient(backend, model=model, cache_dir=cache_dir, concurrency=cfg.concurrency,
                      max_retries=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                      max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                      json_mode=cfg.json_mode and cfg.backend == "openai")


def make_teacher(cfg: TeacherConfig, cache_dir: Path | None) -> Teacher:
    return Teacher(make_client(cfg, cache_dir))


def make_judge(cfg: TeacherConfig, cache_dir: Path | None) -> Judge:
    return Judge(make_client(cfg, cache_dir))

"""The HTTP server: SSE `/chat` (docs/reference.md, "Serving"), OpenAI-compatible `/v1/chat/completions`,
`/v1/completions` and `/v1/models`, `/health`, and a small streaming web chat page at `/`.

Errors: `/chat` answers 422 for a bad body (its documented contract); the `/v1` endpoints answer 400 with an
OpenAI-style `error` object, as OpenAI-compatible clients expect. Both carry `detail` and
`error.message` with the same text. Bodies are bounded in size and read time (`limits.py`).
As in vLLM and OpenAI: a chat that does not fit the context is a 400 `context_length_exceeded`
on `/v1` (`/chat` crops the oldest whole turns instead, keeping the system text); a model name
the server does not serve is a 404 `model_not_found`; a 503 says when to retry (`errors.py`).

Tokens: a raw `/v1/completions` prompt is tokenized as the release's tokenizer does (special-token
text is the special id), chat content never becomes a special (it cannot forge turns).
Logprobs list what the text shows: a token's entry travels with the text that shows it, and
the tokens of a stop string never appear. `/v1/chat/completions` lists nothing else;
`/v1/completions` also lists, last, the generated tokens that show no text (a final stop token,
a trailing partial character), one entry per generated token (see `_final_entries`).
A request whose client has left stops generating: streams notice when a write fails, and a
non-streaming request checks its connection every `DISCONNECT_POLL_S` while it waits.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from wikigpt_core.chat import ChatFormatError
from wikigpt_core.generation import TokenLogprob
from wikigpt_core.generation.text import token_bytes, token_text
from wikigpt_core.tokenizer import SPECIAL_TOKENS
from wikigpt_core.serve.engine import (BadPrompt, Delta, Done, Engine, EngineDead, Job, Params,
                                       PromptTooLong, QueueFull)
from wikigpt_core.serve.errors import error_response as _error
from wikigpt_core.serve.limits import BodyLimit, Limits
from wikigpt_core.serve.schemas import ChatRequest, CompletionRequest, TextCompletionRequest

SPECIAL_IDS = range(len(SPECIAL_TOKENS))  # the tokenizer pins the specials to the first ids
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
OPEN_PATHS = {"/", "/health"}  # reachable without the bearer token
DEFAULT_CHAT_TOKENS = 256
DISCONNECT_POLL_S = 0.25


class ClientLeft(Exception):
    """The client of a non-streaming request disconnected; its generation was cancelled."""


def _describe(errors: list[dict[str, Any]]) -> str:
    """Human message from pydantic errors, e.g. "temperature: must be <= 2"."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        if e.get("type") == "extra_forbidden":
            parts.append(f"{loc}: not supported by this server (see the README, 'Serving', for "
                         "the parameters it implements)")
            continue
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(dict.fromkeys(parts))


def _page() -> str:
    return (resources.files("wikigpt_core") / "resources" / "chat.html").read_text(encoding="utf-8")


def create_app(engine: Engine, token: str | None = None, limits: Limits = Limits(),
               aliases: tuple[str, ...] = ()) -> FastAPI:
    """`aliases`: more model names the server answers to, beside `engine.name` (which it
    reports); /v1/models lists them all, and any other name is a 404."""
    app = FastAPI(title="WikiGPT", docs_url=None, redoc_url=None, openapi_url=None)
    page = _page()
    tok = engine.tok
    served = tuple(dict.fromkeys((engine.name, *aliases)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status = 400 if request.url.path.startswith("/v1/") else 422
        return _error(status, _describe(list(exc.errors())))

    @app.exception_handler(ClientLeft)
    async def _gone(request: Request, exc: ClientLeft) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed"

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> Any:
        state = {"model": engine.name, "block_size": engine.block_size, "auth": bool(token),
                 "queue": engine.stats()}
        if engine.dead:  # a supervisor's health check sees it and restarts the server
            return JSONResponse({"status": "dead", "reason": f"the generation worker stopped: "
                                 f"{engine.dead}; restart the server", **state}, status_code=503)
        return {"status": "ok", **state}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(engine.started),
                                            "owned_by": "wikigpt", "root": engine.name}
                                           for name in served]}

    def _unknown_model(name: str | None) -> JSONResponse | None:
        """A 404 for a model this server does not serve, as vLLM answers (no name: the served one)."""
        if name is None or name in served:
            return None
        return _error(404, f"the model {name!r} is not served here; use {' or '.join(map(repr, served))} "
                      "(GET /v1/models lists them)", "invalid_request_error", code="model_not_found")

    def _submit(submit, *args, bad_status: int = 400) -> Job | JSONResponse:
        try:
            return submit(*args)
        except (ChatFormatError, BadPrompt) as e:
            return _error(bad_status, str(e))
        except PromptTooLong as e:
            return _error(bad_status, str(e), code=e.code)
        except QueueFull as e:
            return _error(503, f"server busy: {e}", "server_busy")
        except EngineDead as e:
            return _error(503, str(e), "server_error")

    @app.post("/chat")
    async def chat(req: ChatRequest) -> Any:
        job = _submit(engine.submit, [m.model_dump() for m in req.messages],
                      Params(req.max_new_tokens, req.temperature, req.top_p, req.seed), bad_status=422)
        if isinstance(job, JSONResponse):
            return job

        async def frames() -> AsyncIterator[str]:
            async for item in _events(job):
                if isinstance(item, Done):
                    if item.error:
                        yield _sse({"error": item.error})
                elif item.text:
                    yield _sse({"delta": item.text})
            yield "data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: CompletionRequest, request: Request) -> Any:
        if (refused := _unknown_model(req.model)) is not None:
            return refused
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as e:
            return _error(400, f"messages: {e}")
        ids = _submit(engine.render, messages)  # whole: too long is a 400, as vLLM and OpenAI answer
        if isinstance(ids, JSONResponse):
            return ids
        # Unset, the reply may use the rest of the context (at most DEFAULT_CHAT_TOKENS), as in vLLM.
        max_tokens = req.max_completion_tokens or req.max_tokens or \
            max(1, min(DEFAULT_CHAT_TOKENS, engine.block_size - len(ids)))
        params = Params(max_tokens, req.temperature, req.top_p, req.seed, stop=req.stop_strings(),
                        logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0)
        job = _submit(engine.submit_ids, ids, params, req.n)
        if isinstance(job, JSONResponse):
            return job
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": created, "model": engine.name}
        lp = (lambda items: {"content": [_chat_logprob(tok, x) for x in _shown(items)], "refusal": None}) \
            if req.logprobs else (lambda items: None)
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(job, _chat_chunks(job, head, lp, usage))
        texts, dones, logprobs = await _collect(job, request)
        if (failed := _failure(dones)) is not None:
            return failed
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": dones[i].finish_reason,
                    "logprobs": lp([x.logprob for x in logprobs[i]])}
                   for i in range(job.n)]
        return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(job, dones)}

    @app.post("/v1/completions")
    async def text_completions(req: TextCompletionRequest, request: Request) -> Any:
        if (refused := _unknown_model(req.model)) is not None:
            return refused
        texts = req.prompts()
        # Raw text is tokenized as the release's tokenizer does: "<|end|>" is the special id.
        prompts = [p if isinstance(p, list) else tok.encode_raw(p) for p in texts]
        params = Params(req.max_tokens, req.temperature, req.top_p, req.seed, stop=req.stop_strings(),
                        logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0,
                        prompt_logprobs=req.echo and req.logprobs is not None)
        if req.stream and len(prompts) > 1:
            return _error(400, "prompt: streaming takes a single prompt")
        jobs = []
        for ids in prompts:
            job = _submit(engine.submit_ids, ids, params, req.n)
            if isinstance(job, JSONResponse):
                for j in jobs:
                    j.cancelled.set()
                return job
            jobs.append(job)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": engine.name}
        echoes = [_echo_text(tok, p) for p in texts] if req.echo else [""] * len(jobs)
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(jobs[0], _text_chunks(jobs[0], head, tok, req, echoes[0], usage))
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        try:
            for p, job in enumerate(jobs):
                texts, dones, logprobs = await _collect(job, request)
                if (failed := _failure(dones)) is not None:
                    return failed
                for i in range(job.n):
                    choices.append({"index": p * job.n + i, "text": echoes[p] + texts[i],
                                    "finish_reason": dones[i].finish_reason,
                                    "logprobs": _text_logprobs(tok, logprobs[i] + _final_entries(dones[i]))
                                    if req.logprobs is not None else None})
                for k, v in _usage(job, dones).items():
                    usage[k] += v
        finally:  # the client left or a prompt failed: the other prompts stop too (no-op if done)
            for j in jobs:
                j.cancelled.set()
        return {**head, "object": "text_completion", "choices": choices, "usage": usage}

    app.add_middleware(BodyLimit, limits=limits)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: strangers are refused unread
    return app


class BearerAuth:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>`.
    (A pure ASGI class, not `@app.middleware`: that wrapper hides client disconnects.)"""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._allowed(scope):
            response = _error(401, "missing or wrong bearer token (send Authorization: Bearer <token>)",
                              "authentication_error")
            return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        given = header[7:] if header[:7].lower() == b"bearer " else b""
        return secrets.compare_digest(given, self.token)


async def _events(job: Job, request: Request | None = None) -> AsyncIterator[Delta | Done]:
    """Deltas and one Done per choice; a client that goes away cancels its generation. With
    `request` (non-streaming: nothing is written until the end, so no write can fail), the
    connection is checked while waiting, and a departed client raises ClientLeft."""
    watch = _DisconnectWatch(request) if request is not None else None
    try:
        left = job.n
        while left:
            item = await _next_event(job, watch)
            yield item
            if isinstance(item, Done):
                left -= 1
    finally:
        job.cancelled.set()  # no-op once all are done; stops the worker early on a disconnect


class _DisconnectWatch:
    """Checks a request's connection at most every DISCONNECT_POLL_S (events may arrive far
    more often: one per token)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.due = time.monotonic() + DISCONNECT_POLL_S

    def wait_s(self) -> float:
        return max(0.0, self.due - time.monotonic())

    async def check(self) -> None:
        if time.monotonic() < self.due:
            return
        if await self.request.is_disconnected():
            raise ClientLeft
        self.due = time.monotonic() + DISCONNECT_POLL_S


async def _next_event(job: Job, watch: _DisconnectWatch | None) -> Delta | Done:
    if watch is None:
        return await job.events.get()
    while True:
        await watch.check()
        try:
            return await asyncio.wait_for(job.events.get(), watch.wait_s())
        except asyncio.TimeoutError:
            pass


async def _collect(job: Job, request: Request) -> tuple[list[str], list[Done], list[list[Scored]]]:
    """Per choice: the text, the Done, and (prompt entries first, when scored) the logprobs."""
    texts: list[list[str]] = [[] for _ in range(job.n)]
    logprobs: list[list[Scored]] = [[] for _ in range(job.n)]
    dones: list[Done | None] = [None] * job.n
    async for item in _events(job, request):
        if isinstance(item, Done):
            dones[item.index] = item
        else:
            texts[item.index].append(item.text)
            logprobs[item.index] += _prompt_entries(job, item) + _entries(item.logprobs)
    return ["".join(t) for t in texts], dones, logprobs  # type: ignore[return-value]


def _failure(dones: list[Done]) -> JSONResponse | None:
    err = next((d.error for d in dones if d.error), None)
    return _error(500, f"generation failed: {err}", "server_error") if err else None


def _stream(job: Job, chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(job: Job, dones: list[Done]) -> dict[str, int]:
    completion = sum(d.completion_tokens for d in dones)
    return {"prompt_tokens": len(job.ids), "completion_tokens": completion,
            "total_tokens": len(job.ids) + completion}


def _chat_logprob(tok, lp: TokenLogprob) -> dict[str, Any]:
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(tok, token_id), "logprob": logprob,
                "bytes": list(token_bytes(tok, token_id))}
    return {**one(lp.token_id, lp.logprob), "top_logprobs": [one(i, v) for i, v in lp.top]}


@dataclass
class Scored:
    """One entry of a legacy completions logprobs listing."""

    token_id: int
    logprob: TokenLogprob | None
    """None for the first prompt token: nothing precedes it."""


def _entries(logprobs: list[TokenLogprob]) -> list[Scored]:
    return [Scored(lp.token_id, lp) for lp in logprobs]


def _prompt_entries(job: Job, delta: Delta) -> list[Scored]:
    """The prompt's entries, if this Delta carries them (the first of a scoring choice)."""
    if not delta.prompt_logprobs:
        return []
    return [Scored(i, lp) for i, lp in zip(job.ids, delta.prompt_logprobs, strict=True)]


def _final_entries(done: Done) -> list[Scored]:
    """The entries of the trailing tokens that show no text, the final stop token last.
    Completions list them, as vLLM does: loglikelihood clients (lm-eval) count on one entry per
    generated token and read the last one as the generated token."""
    stop = [] if done.stop_logprob is None else [done.stop_logprob]
    return _entries(done.unshown_logprobs + stop)


def _shown(logprobs: list[TokenLogprob]) -> list[TokenLogprob]:
    """What chat logprobs list: the tokens the content shows (no specials)."""
    return [lp for lp in logprobs if lp.token_id not in SPECIAL_IDS]


def _echo_text(tok, prompt: str | list[int]) -> str:
    """The prompt as echoed: the text as sent, or the ids' text with specials spelled out (so
    the listed tokens join to it)."""
    return prompt if isinstance(prompt, str) else tok.decode(prompt, skip_special_tokens=False)


def _text_logprobs(tok, entries: list[Scored], offset: int = 0) -> dict[str, Any]:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset (where
    each token starts in the choice's whole text; `offset`: the characters before these)."""
    tokens = [token_text(tok, e.token_id) for e in entries]
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens,
            "token_logprobs": [None if e.logprob is None else e.logprob.logprob for e in entries],
            "top_logprobs": [None if e.logprob is None else {token_text(tok, i): v for i, v in e.logprob.top}
                             for e in entries],
            "text_offset": offsets}


async def _chat_chunks(job: Job, head: dict[str, Any], lp, include_usage: bool) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs=None) -> str:
        return _sse({**head, "object": "chat.completion.chunk",
                     "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                  "logprobs": logprobs}]})

    for i in range(job.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    dones = []
    async for item in _events(job):
        if isinstance(item, Done):
            if item.error:
                yield _sse({"error": {"message": f"generation failed: {item.error}", "type": "server_error"}})
                break
            dones.append(item)
            yield chunk(item.index, {}, item.finish_reason)
        else:
            yield chunk(item.index, {"content": item.text}, logprobs=lp(item.logprobs))
    if include_usage and len(dones) == job.n:
        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(job, dones)})
    yield "data: [DONE]\n\n"


async def _text_chunks(job: Job, head: dict[str, Any], tok, req: TextCompletionRequest, echo: str,
                       include_usage: bool) -> AsyncIterator[str]:
    def chunk(index: int, text: str, finish: str | None = None, logprobs=None) -> str:
        return _sse({**head, "object": "text_completion",
                     "choices": [{"index": index, "text": text, "finish_reason": finish,
                                  "logprobs": logprobs}]})

    def listing(entries: list[Scored], index: int):
        return _text_logprobs(tok, entries, shown[index]) if want else None

    want = req.logprobs is not None
    shown = [0] * job.n  # characters each choice has streamed: where its next text_offset starts
    echoed: set[int] = set()
    dones = []
    async for item in _events(job):
        if req.echo and item.index not in echoed:  # the prompt goes first, once per choice
            echoed.add(item.index)
            prompt = _prompt_entries(job, item) if isinstance(item, Delta) else []
            yield chunk(item.index, echo, logprobs=listing(prompt, item.index))
            shown[item.index] = len(echo)
        if isinstance(item, Done):
            if item.error:
                yield _sse({"error": {"message": f"generation failed: {item.error}", "type": "server_error"}})
                break
            dones.append(item)
            final = _final_entries(item)
            yield chunk(item.index, "", item.finish_reason, logprobs=listing(final, item.index) if final else None)
        elif item.text or item.logprobs:  # not a Delta that only carried the prompt's logprobs
            yield chunk(item.index, item.text, logprobs=listing(_entries(item.logprobs), item.index))
            shown[item.index] += len(item.text)
    if include_usage and len(dones) == job.n:
        yield _sse({**head, "object": "text_completion", "choices": [], "usage": _usage(job, dones)})
    yield "data: [DONE]\n\n"

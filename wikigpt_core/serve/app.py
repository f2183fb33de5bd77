"""The HTTP server: SSE `/chat` (SPEC §6), OpenAI-compatible `/v1/chat/completions` and
`/v1/models`, `/health`, and a small streaming web chat page at `/`."""
from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from wikigpt_core.chat import ChatFormatError
from wikigpt_core.serve.engine import Done, Engine, Job, Params, QueueFull
from wikigpt_core.serve.schemas import ChatRequest, CompletionRequest

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
OPEN_PATHS = {"/", "/health"}  # reachable without the bearer token


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    # `detail` for FastAPI-style clients, `error` for OpenAI-style clients; same message.
    return JSONResponse({"detail": message, "error": {"message": message, "type": kind}},
                        status_code=status)


def _describe(errors: list[dict[str, Any]]) -> str:
    """Human message from pydantic errors, e.g. "body.temperature: must be <= 2"."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _page() -> str:
    return (resources.files("wikigpt_core") / "resources" / "chat.html").read_text(encoding="utf-8")


def create_app(engine: Engine, token: str | None = None) -> FastAPI:
    app = FastAPI(title="WikiGPT", docs_url=None, redoc_url=None, openapi_url=None)
    page = _page()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe(list(exc.errors())))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if token and request.url.path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), token.encode()):
                return _error(401, "missing or wrong bearer token (send Authorization: Bearer <token>)",
                              "authentication_error")
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "block_size": engine.block_size,
                "auth": bool(token), "queue": engine.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model",
                                            "created": int(engine.started), "owned_by": "wikigpt"}]}

    def _submit(messages: list[dict[str, str]], params: Params) -> Job | JSONResponse:
        try:
            return engine.submit(messages, params)
        except ChatFormatError as e:
            return _error(422, str(e))
        except QueueFull as e:
            return _error(503, f"server busy: {e}", "server_busy")

    @app.post("/chat")
    async def chat(req: ChatRequest) -> Any:
        job = _submit([m.model_dump() for m in req.messages],
                      Params(req.max_new_tokens, req.temperature, req.top_p, req.seed))
        if isinstance(job, JSONResponse):
            return job

        async def frames() -> AsyncIterator[str]:
            async for item in _events(job):
                if isinstance(item, Done):
                    if item.error:
                        yield _sse({"error": item.error})
                    break
                yield _sse({"delta": item})
            yield "data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/chat/completions")
    async def completions(req: CompletionRequest) -> Any:
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as e:
            return _error(422, f"messages: {e}")
        max_new = req.max_completion_tokens or req.max_tokens or 256
        job = _submit(messages, Params(max_new, req.temperature, req.top_p, req.seed))
        if isinstance(job, JSONResponse):
            return job
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_openai_stream(job, cid, created, engine.name, usage),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, done = [], None
        async for item in _events(job):
            if isinstance(item, Done):
                done = item
                break
            text.append(item)
        assert done is not None
        if done.error:
            return _error(500, f"generation failed: {done.error}", "server_error")
        return {"id": cid, "object": "chat.completion", "created": created, "model": engine.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "finish_reason": done.finish_reason, "logprobs": None}],
                "usage": _usage(done)}

    return app


async def _events(job: Job) -> AsyncIterator[str | Done]:
    """Deltas then one Done; a client that goes away cancels its generation."""
    try:
        while True:
            item = await job.events.get()
            yield item
            if isinstance(item, Done):
                return
    finally:
        job.cancelled.set()  # no-op after Done; stops the worker early on a disconnect


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def _openai_stream(job: Job, cid: str, created: int, model: str, include_usage: bool
                         ) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                     **extra})

    yield chunk({"role": "assistant", "content": ""})
    async for item in _events(job):
        if isinstance(item, Done):
            if item.error:
                yield _sse({"error": {"message": f"generation failed: {item.error}", "type": "server_error"}})
                break
            yield chunk({}, item.finish_reason)
            if include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": _usage(item)})
            break
        yield chunk({"content": item})
    yield "data: [DONE]\n\n"

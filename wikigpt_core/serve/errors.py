"""The one shape of every error the server answers: FastAPI's `detail` and OpenAI's `error`
object, carrying the same message (and OpenAI's `code` where one applies, e.g.
`context_length_exceeded`, `model_not_found`).

A 503 (busy, or the worker gone) says when to retry: `Retry-After` in whole seconds (HTTP) and
`retry-after-ms`, which the official OpenAI clients read first. The milliseconds are jittered,
so clients refused at the same moment do not all come back at the same moment."""
from __future__ import annotations

import json
import random
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse


RETRY_AFTER_S = 1
"""What a 503 asks a client to wait before retrying (the jitter spreads it over 0.5x-1.5x)."""


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None
               ) -> dict[str, Any]:
    # A message may quote client input; an unpaired surrogate in it could not be encoded.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"detail": message, "error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    if status == 503:
        headers = {**retry_after(), **(headers or {})}
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


def retry_after() -> dict[str, str]:
    """The headers that tell a client of a 503 when to come back (see the module doc)."""
    ms = int(RETRY_AFTER_S * 1000 * random.uniform(0.5, 1.5))
    return {"Retry-After": str(RETRY_AFTER_S), "retry-after-ms": str(ms)}


def raw_error(status: int, message: str, kind: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the transport level
    (before any request exists to answer through the app)."""
    body = json.dumps(error_body(message, kind)).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in retry_after().items()) if status == 503 else ""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode("ascii") + body

"""The one shape of every error the server answers: FastAPI's `detail` and OpenAI's `error`
object, carrying the same message."""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    # A message may quote client input; an unpaired surrogate in it could not be encoded.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"detail": message, "error": {"message": message, "type": kind}}


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind), status_code=status, headers=headers)


def raw_error(status: int, message: str, kind: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the transport level
    (before any request exists to answer through the app)."""
    body = json.dumps(error_body(message, kind)).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body

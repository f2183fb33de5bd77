"""What one client may cost the server: body size, read time, header size, connections.

- The body: a declared `Content-Length` over `max_body_bytes` is answered 413 before a byte of
  it is read; a chunked body is counted while read and refused as soon as it passes the cap.
  The whole body must arrive within `read_timeout_s` (else 408), so a client trickling it
  holds its connection that long at most.
- The headers: each request's headers must be complete within `read_timeout_s` of its first
  byte (or of the connection, for the first request), and within `max_header_bytes`; else
  408 / 431 and the connection closes. Idle keep-alive connections close after uvicorn's
  `timeout_keep_alive`.
- Connections: beyond `max_connections` open at once, a new connection is answered 503 and
  closed at once, so half-open sockets cannot pile up (requests that do get in are further
  bounded by the engine's batch and queue).

The body checks are an ASGI middleware (`BodyLimit`); the header and connection checks live in
the HTTP protocol (`guarded_protocol`), the only place that sees a request before its headers
are complete.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from wikigpt_core.serve.errors import error_response, raw_error

KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 * MIB
    read_timeout_s: float = 10.0
    """For the headers of a request, and again for its body."""
    max_connections: int = 64
    max_header_bytes: int = 64 * KIB

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "read_timeout_s", "max_connections", "max_header_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")


class _TooLarge(Exception):
    pass


class _ClientLeft(Exception):
    pass


class BodyLimit:
    """ASGI middleware: reads each request's body (bounded in size and time) before the app
    sees it, then hands it over as one message."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            return await self._refuse(scope, send, 413, _too_large(f"declares {declared:,} bytes", cap))
        try:
            body = await asyncio.wait_for(_read_body(receive, cap), self.limits.read_timeout_s)
        except _TooLarge:
            return await self._refuse(scope, send, 413, _too_large("is chunked past the limit", cap))
        except asyncio.TimeoutError:
            return await self._refuse(scope, send, 408, f"the request body did not arrive within "
                                      f"{self.limits.read_timeout_s:g} s; send it at once")
        except _ClientLeft:
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _refuse(scope: dict, send: Any, status: int, message: str) -> None:
        # Closing the connection: the unread rest of the body must not be parsed as a request.
        response = error_response(status, message, headers={"connection": "close"})
        await response(scope, _no_receive, send)


def _too_large(what: str, cap: int) -> str:
    return f"the request body {what}; the limit is {cap:,} bytes (see `wikigpt serve --max-body-bytes`)"


def _content_length(scope: dict) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None  # the HTTP parser rejects bad ones
    return None


async def _read_body(receive: Any, cap: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that yields the body read, then the real one (for disconnects)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def guarded_protocol(base: type, limits: Limits) -> type:
    """`base` (a uvicorn HTTP protocol class) with the header deadline, header size cap and
    connection cap. Uses what both uvicorn protocols share: `connections`, `transport` and
    `cycle` (the current request, None before the first; a new one once headers are done)."""

    class Guarded(base):
        _deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                return self._refuse(503, f"the server has {limits.max_connections} connections "
                                    "open, its limit; retry shortly", "server_busy")
            self._arm()

        def data_received(self, data: bytes) -> None:
            awaiting = self._awaiting_headers()
            if awaiting:
                self._arm()  # the first byte of a request starts its header deadline
                self._header_bytes += len(data)
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()
            elif self._header_bytes > limits.max_header_bytes:
                self._refuse(431, f"the request headers exceed {limits.max_header_bytes:,} bytes",
                             "invalid_request_error")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = asyncio.get_running_loop().call_later(
                    limits.read_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._header_bytes = None, 0

        def _headers_late(self) -> None:
            self._deadline = None
            if self._awaiting_headers():
                self._refuse(408, f"the request headers did not arrive within "
                             f"{limits.read_timeout_s:g} s", "invalid_request_error")

        def _refuse(self, status: int, message: str, kind: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(raw_error(status, message, kind))
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


GRACEFUL_SHUTDOWN_S = 10.0
"""On SIGTERM, requests still running after this long are cancelled: the process always stops."""
KEEP_ALIVE_S = 5.0
"""An idle keep-alive connection closes after this long."""


def uvicorn_config(app: Any, *, host: str, port: int, limits: Limits, log_level: str = "info"):
    """uvicorn settings for `app` with `limits` enforced at the connection level too."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          http=guarded_protocol(AutoHTTPProtocol, limits),
                          timeout_keep_alive=KEEP_ALIVE_S,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)

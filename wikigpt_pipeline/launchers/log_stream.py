"""Dagster Pipes over a log stream: the remote stage prints its Pipes messages to stdout, and
the launcher picks them out of the job log it tails.

SkyPilot gives us exactly one channel back from a rented GPU: the job's log, streamed by
`sky.tail_logs(..., output_stream=...)`. So the remote process is told (through the
`DAGSTER_PIPES_MESSAGES` variable) to write messages to stdout, and `LogStreamMessageReader`
receives every log line: a line carrying a Pipes message goes to Dagster's message handler,
anything else is echoed to this process's stdout (captured as the step's compute log) and kept
in a ring buffer, so a failure can quote the tail of the remote log.

Log lines may arrive prefixed (SkyPilot writes `(task, pid=123) ...`), so a message is found
by its opening `{"__dagster_pipes_version"` rather than by the start of the line.
"""
from __future__ import annotations

import io
import json
import sys
import threading
from collections import deque
from contextlib import contextmanager
from typing import Iterator, TextIO

import dagster as dg

from wikigpt_pipeline.progress import StageProgress

_MESSAGE_START = '{"__dagster_pipes_version"'
DEFAULT_TAIL_LINES = 60


class LogStreamMessageReader(dg.PipesMessageReader):
    """A Pipes message reader fed line by line from a remote log (see module docstring)."""

    def __init__(self, tail_lines: int = DEFAULT_TAIL_LINES, echo: TextIO | None = None) -> None:
        self._handler: dg.PipesMessageHandler | None = None
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._echo = echo
        self._lock = threading.Lock()
        self.messages_seen = 0

    progress: StageProgress | None = None
    """The stage's metrics become console progress lines, as locally."""

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[dict]:
        self._handler = handler
        try:
            # The remote process's PipesDefaultMessageWriter writes to its stdout.
            yield {"stdio": "stdout"}
        finally:
            self._handler = None

    def feed_line(self, line: str) -> None:
        """Route one log line: Pipes message → handler; anything else → echo + tail buffer."""
        line = line.rstrip("\r\n")
        start = line.find(_MESSAGE_START)
        if start >= 0 and self._handler is not None:
            try:
                message = json.loads(line[start:])
            except json.JSONDecodeError:
                message = None
            if message is not None:
                with self._lock:
                    self.messages_seen += 1
                    if self.progress:
                        self.progress.pipes_message(message)
                    self._handler.handle_message(message)
                return
        with self._lock:
            self._tail.append(line)
        echo = self._echo or sys.stdout
        echo.write(line + "\n")

    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail)

    def stream(self) -> "LineSink":
        """A text stream to hand to `sky.tail_logs(output_stream=...)`."""
        return LineSink(self.feed_line)

    def no_messages_debug_text(self) -> str:
        return ("Attempted to read Pipes messages from the remote job's stdout, as streamed by "
                "`sky.tail_logs`; check that the stage CLI wraps its work in stage_reporter.")


class LineSink(io.TextIOBase):
    """A writable text stream that hands complete lines to a callback (partial lines are
    buffered until their newline, or until `flush`/`close`)."""

    def __init__(self, on_line) -> None:
        super().__init__()
        self._on_line = on_line
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._on_line(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._on_line(line)

    def close(self) -> None:
        self.flush()
        super().close()

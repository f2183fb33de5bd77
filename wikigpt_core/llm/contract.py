"""What a chat backend returns and raises: the contract between `ChatClient` (client.py) and
the backends (backends.py), kept apart so that neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class TeacherError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable error)."""


class RetryableError(TeacherError):
    """A transient failure (5xx, 429, timeout, connection): worth another try."""


class TeacherAuthError(TeacherError):
    """The endpoint refused the API key (HTTP 401/403): every further request would be refused
    too, so the stage stops at once and no retry can help."""

    transient = False


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatBackend(Protocol):
    backend_id: str
    """Identity folded into the cache key (backend kind + model), never a secret."""

    def complete(self, body: dict[str, Any]) -> Completion: ...

"""On-disk response cache for teacher/judge requests, keyed by a hash of the request.

One small JSON file per response, under `<dir>/<key[:2]>/<key>.json`, written atomically, so
concurrent workers and killed runs never leave a half-written entry. A rerun with the same
requests is answered from here and sends nothing to the backend.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from wikigpt_core.artifacts import atomic_write_bytes


def request_key(backend_id: str, body: dict[str, Any]) -> str:
    """sha256 over the backend identity and the canonical JSON of the request body."""
    blob = json.dumps({"backend": backend_id, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A damaged entry is treated as a miss and overwritten by the fresh response.
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_bytes(self._path(key), json.dumps(value, ensure_ascii=False).encode())

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json")) if self.dir.exists() else 0

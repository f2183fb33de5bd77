"""JSON-lines files, as the stages write them: one object per line, blank lines skipped."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, error: type[Exception] = ValueError, *, missing_hint: str = "") -> list[dict[str, Any]]:
    """Every row of `path`. A missing file or a line that is not JSON raises `error` (the
    caller's own type) naming the file and line; `missing_hint` says what would create it."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path} is missing" + (f"; {missing_hint}" if missing_hint else ""))
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{n} is not valid JSON ({e}); rebuild it") from None
    return rows

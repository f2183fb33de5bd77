"""Artifacts: directories written atomically, each with a manifest and a content hash.

A stage writes into a hidden temp directory beside its destination; only when the stage
returns normally is the directory renamed into place. A failed stage therefore leaves the
previous good artifact untouched, and a reader never sees a half-written one.

The content hash is the asset's Dagster DataVersion. It covers what a consumer reads (weights,
config, tokenizer, data files, results) and leaves out the manifest and the `run/` folder, where
a stage keeps its run record: logs, timings, costs, host facts. So a rerun that reproduces its
outputs yields the identical version even though it took a different time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RUN_DIR = "run"
"""Subfolder for the run record (logs, timings); kept with the artifact, outside its hash."""
CURRENT = "current"
"""Beside an asset's version dirs: a relative symlink to the latest materialized one."""
_HASH_CHUNK = 1 << 20


@dataclass
class StageResult:
    """What a stage hands back: where its artifact is, its content hash, and its figures."""

    path: Path
    content_hash: str
    stats: dict[str, Any] = field(default_factory=dict)


def content_hash(directory: Path) -> str:
    """sha256 over (relative path, bytes) of every file in sorted order, except the manifest and
    the run record under `run/`."""
    directory = Path(directory)
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if not p.is_file() or rel.parts[0] in (MANIFEST, RUN_DIR):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactWriter:
    """Context manager: `with ArtifactWriter(out, stage="clean", config=...) as w:` write files
    under `w.dir`, put figures in `w.stats`; on a clean exit the directory is published at `out`
    with a manifest. On an exception the temp dir is removed and `out` is left as it was."""

    def __init__(self, out: Path, *, stage: str, config: dict[str, Any] | None = None,
                 inputs: dict[str, str] | None = None) -> None:
        self.out = Path(out)
        self.stage = stage
        self.config = config or {}
        self.inputs = inputs or {}
        self.stats: dict[str, Any] = {}
        self.dir = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.result: StageResult | None = None

    @property
    def run_dir(self) -> Path:
        """Where the run record goes (logs, timings, costs): shown, kept, not hashed."""
        path = self.dir / RUN_DIR
        path.mkdir(exist_ok=True)
        return path

    def __enter__(self) -> "ArtifactWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir()
        self._t0 = time.time()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return False
        digest = content_hash(self.dir)
        manifest = {
            "stage": self.stage,
            "content_hash": digest,
            "created_unix": round(time.time(), 3),
            "write_seconds": round(time.time() - self._t0, 3),  # the stage's own time is in stats
            "config": self.config,
            "inputs": self.inputs,
            "stats": self.stats,
        }
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        swap_into_place(self.dir, self.out)
        self.result = StageResult(path=self.out, content_hash=digest, stats=self.stats)
        return False


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out. An existing out is first moved aside, then deleted, so the window in
    which neither exists is two renames long and a crash in it leaves the old copy recoverable."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def point_current(version_dir: Path) -> Path:
    """Point `<asset>/current` at `version_dir` (a sibling), atomically: a new symlink is
    renamed over the old one, so a reader always finds one complete version there."""
    version_dir = Path(version_dir)
    link = version_dir.parent / CURRENT
    tmp = version_dir.parent / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(version_dir.name, tmp)
    os.replace(tmp, link)
    return link


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} has no {MANIFEST}: it is not a finished artifact. "
            "Materialize the upstream asset first."
        )
    return json.loads(path.read_text())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a single file atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

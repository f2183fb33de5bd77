"""Artifacts: directories written atomically, each with a manifest and a content hash.

A stage writes into a hidden temp directory beside its destination; only when the stage
returns normally is the directory renamed into place. A failed stage therefore leaves the
previous good artifact untouched, and a reader never sees a half-written one.

The content hash is the asset's Dagster DataVersion. It covers what a consumer reads (weights,
config, tokenizer, data files, results) and leaves out the manifest and the `run/` folder, where
a stage keeps its run record: logs, timings, costs, host facts. So a rerun that reproduces its
outputs yields the identical version even though it took a different time.

The manifest also records each hashed file's size, sha256 and a sampled digest (see
`sampled_digest`), so a reader can verify the bytes it is about to trust without trusting the
manifest's mere presence (wikigpt_core.integrity). A published version is never replaced: a
second writer of the same version finds it there and keeps it.
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
SAMPLE_EDGE = 1 << 20
"""A sampled digest reads the first and the last MiB of a file..."""
SAMPLE_BLOCKS, SAMPLE_BLOCK = 16, 64 << 10
"""...and 16 blocks of 64 KiB spread evenly between them: ~3 MiB whatever the file's size."""
SAMPLING = "sha256:edges-1MiB+16x64KiB"
"""Names the sampling scheme in the manifest, so a changed scheme is never mistaken for damage."""


@dataclass
class StageResult:
    """What a stage hands back: where its artifact is, its content hash, and its figures."""

    path: Path
    content_hash: str
    stats: dict[str, Any] = field(default_factory=dict)


class NotReproduced(RuntimeError):
    """A stage recomputed a version that is already published, and got other bytes."""


def hashed_files(directory: Path) -> dict[str, Path]:
    """The files the content hash covers, by relative path in sorted order: all but the manifest
    and the run record under `run/`."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if p.is_file() and rel.parts[0] not in (MANIFEST, RUN_DIR):
            files[rel.as_posix()] = p
    return files


def content_hash(directory: Path) -> str:
    """sha256 over (relative path, bytes) of every hashed file in sorted order."""
    return _hash_files(directory, per_file=False)[0]


def hash_with_file_records(directory: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The content hash and, per hashed file, {size, sha256, sampled}, from one read of the bytes."""
    return _hash_files(directory, per_file=True)


def _hash_files(directory: Path, per_file: bool) -> tuple[str, dict[str, dict[str, Any]]]:
    h = hashlib.sha256()
    records: dict[str, dict[str, Any]] = {}
    for rel, p in hashed_files(directory).items():
        h.update(rel.encode() + b"\0")
        one = hashlib.sha256() if per_file else None
        size = 0
        with p.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
                if one is not None:
                    one.update(chunk)
        h.update(b"\0")
        if one is not None:
            records[rel] = {"size": size, "sha256": one.hexdigest(), "sampled": sampled_digest(p)}
    return h.hexdigest(), records


def sample_offsets(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the blocks a sampled digest reads: the whole file when it is small,
    else the first and last SAMPLE_EDGE bytes and SAMPLE_BLOCKS blocks evenly between them."""
    if size <= 2 * SAMPLE_EDGE + SAMPLE_BLOCKS * SAMPLE_BLOCK:
        return [(0, size)]
    span = size - 2 * SAMPLE_EDGE - SAMPLE_BLOCK  # where a middle block may start, past the head
    middle = [(SAMPLE_EDGE + span * i // (SAMPLE_BLOCKS - 1), SAMPLE_BLOCK) for i in range(SAMPLE_BLOCKS)]
    return [(0, SAMPLE_EDGE), *middle, (size - SAMPLE_EDGE, SAMPLE_EDGE)]


def sampled_digest(path: Path) -> str:
    """sha256 over a file's size and the blocks `sample_offsets` names: a cheap check that
    catches truncation, growth and damage at the ends or at a sampled block, not every flipped
    byte (that takes `file_sha256`)."""
    size = Path(path).stat().st_size
    h = hashlib.sha256(str(size).encode() + b"\0")
    with Path(path).open("rb") as f:
        for offset, length in sample_offsets(size):
            f.seek(offset)
            h.update(f.read(length))
    return h.hexdigest()


def file_sha1(path: Path) -> str:
    return _file_digest(path, "sha1")


def file_sha256(path: Path) -> str:
    return _file_digest(path, "sha256")


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactWriter:
    """Context manager: `with ArtifactWriter(out, stage="cleaned_articles", config=...) as w:`
    write files under `w.dir`, put figures in `w.stats`; on a clean exit the directory is
    published at `out` with a manifest, unless a complete artifact is already there: that one is
    kept, and must hold the same bytes (else NotReproduced). On an exception the temp dir is
    removed and `out` is left as it was."""

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
        digest, files = hash_with_file_records(self.dir)
        manifest = {
            "stage": self.stage,
            "content_hash": digest,
            "files": files,
            "sampling": SAMPLING,
            "created_unix": round(time.time(), 3),
            "write_seconds": round(time.time() - self._t0, 3),  # the stage's own time is in stats
            "config": self.config,
            "inputs": self.inputs,
            "stats": self.stats,
        }
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if swap_into_place(self.dir, self.out):
            self.result = StageResult(path=self.out, content_hash=digest, stats=self.stats)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.result = self._already_published(digest)
        return False

    def _already_published(self, digest: str) -> StageResult:
        """The version was published while this writer worked (a recompute, or a run that did
        not take the version lock): it is kept, and must hold the same bytes."""
        published = read_manifest(self.out)
        if published["content_hash"] != digest:
            raise NotReproduced(
                f"{self.stage}: {self.out} is already published with content hash "
                f"{published['content_hash'][:12]}, and this run produced {digest[:12]}. The "
                "published version is kept (a version is never overwritten); the stage does not "
                "reproduce its bytes on this machine.")
        return StageResult(path=self.out, content_hash=digest, stats=published.get("stats", {}))


def is_complete(directory: Path) -> bool:
    """A version directory appears only by an atomic rename of a finished artifact, so a
    manifest in it means the stage finished (whether its bytes are still intact is
    wikigpt_core.integrity's question)."""
    return (Path(directory) / MANIFEST).is_file()


def swap_into_place(tmp: Path, out: Path) -> bool:
    """Rename tmp to out; False, leaving tmp where it is, when out is already a complete
    artifact, which is never replaced. An incomplete out is first moved aside, then deleted, so
    the window in which neither exists is two renames long and a crash in it leaves the old copy
    recoverable."""
    try:
        os.rename(tmp, out)  # fails on a non-empty out, so a racing writer cannot clobber it
        return True
    except OSError:
        if not out.exists():
            raise
    if is_complete(out):
        return False
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return True


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


def manifest_hash(directory: Path) -> str | None:
    """The content hash a finished artifact's manifest records; None where there is no manifest
    (not a pipeline artifact, or not finished)."""
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()).get("content_hash", "") if path.is_file() else None


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

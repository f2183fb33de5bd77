"""Bytes are verified, not trusted because a manifest exists.

Each manifest records, per file, its size, its sha256 and a sampled digest (first and last MiB
plus 16 blocks of 64 KiB; see wikigpt_core.artifacts). A reader checks a version before it
trusts it: the runner before a cache hit, and a stage before it reads an upstream.

What is checked, file by file (`VerifyPolicy`):

- always the size, so a truncated or grown file is caught for free;
- the full sha256 of weights (a flipped byte in a checkpoint trains on silently) and of every
  file up to `full_hash_max_bytes` (256 MiB by default): that covers a 124m checkpoint
  (~0.5 GB of weights) in about half a second per GB at this machine's ~1.1 GB/s;
- the sampled digest of larger data files (a 22 GB dump, multi-GB parquet and token shards):
  ~3 MiB read per file instead of the whole file (a full pass over 22 GB is ~20 s when cached
  and minutes from disk). It catches truncation and damage at the ends or at a sampled block,
  not every flipped byte in the middle. `WIKIGPT_FULL_HASH_MAX_MB` raises the limit (e.g. to
  100000 to hash everything fully).

A corrupt version is reported by asset and version, moved aside as `<version>.corrupt-<time>`
so the recompute can publish the version again, and left for `wikigpt gc` to remove.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wikigpt_core.artifacts import (MANIFEST, SAMPLING, content_hash, file_sha256, hashed_files,
                                    is_complete, sampled_digest)

FULL_HASH_MAX_ENV = "WIKIGPT_FULL_HASH_MAX_MB"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".gguf")
"""Always hashed in full, whatever their size: a damaged weight gives no error, only a bad model."""
CORRUPT_MARK = ".corrupt-"
"""A corrupt version moved aside is named `<version>.corrupt-<time>-<id>`."""


@dataclass(frozen=True)
class VerifyPolicy:
    full_hash_max_bytes: int = 256 << 20
    """Files up to this size are hashed in full; larger data files by the sampled digest."""
    full_hash_suffixes: tuple[str, ...] = WEIGHT_SUFFIXES

    @classmethod
    def from_env(cls) -> "VerifyPolicy":
        raw = os.environ.get(FULL_HASH_MAX_ENV)
        if raw is None:
            return cls()
        try:
            return cls(full_hash_max_bytes=int(float(raw) * (1 << 20)))
        except ValueError:
            raise ValueError(f"{FULL_HASH_MAX_ENV}={raw!r} is not a number of MiB; "
                             "set it to e.g. 256, or unset it") from None

    def hashes_in_full(self, rel: str, size: int) -> bool:
        return size <= self.full_hash_max_bytes or rel.endswith(self.full_hash_suffixes)


class CorruptArtifact(RuntimeError):
    """A version's bytes do not match its manifest."""

    def __init__(self, asset: str, directory: Path, problems: list[str]) -> None:
        self.asset, self.directory, self.problems = asset, Path(directory), problems
        super().__init__(f"`{asset}` version {self.version} at {self.directory} fails its "
                         f"manifest: {'; '.join(problems)}")

    @property
    def version(self) -> str:
        return self.directory.resolve().name


def verify_artifact(directory: Path, asset: str, policy: VerifyPolicy | None = None) -> dict[str, Any]:
    """The manifest of a complete artifact whose bytes match it; CorruptArtifact naming every
    file that does not."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifact(asset, directory, [f"{MANIFEST} is unreadable ({e})"]) from None
    problems = manifest_problems(directory, manifest, policy or VerifyPolicy.from_env())
    if problems:
        raise CorruptArtifact(asset, directory, problems)
    return manifest


def manifest_problems(directory: Path, manifest: dict[str, Any], policy: VerifyPolicy) -> list[str]:
    records = manifest.get("files")
    if records is None or manifest.get("sampling") != SAMPLING:
        return _whole_hash_problems(directory, manifest)  # written before per-file records
    present = hashed_files(directory)
    problems = [_file_problem(rel, present.get(rel), rec, policy) for rel, rec in records.items()]
    problems += [f"{rel} is not in the manifest" for rel in present if rel not in records]
    return [p for p in problems if p]


def _file_problem(rel: str, path: Path | None, record: dict[str, Any], policy: VerifyPolicy) -> str | None:
    if path is None:
        return f"{rel} is missing"
    size = path.stat().st_size
    if size != record["size"]:
        return f"{rel} size {size} != {record['size']} recorded"
    if policy.hashes_in_full(rel, size):
        if file_sha256(path) != record["sha256"]:
            return f"{rel} bytes differ from the recorded sha256 (same size)"
    elif sampled_digest(path) != record["sampled"]:
        return f"{rel} bytes differ from the recorded sampled digest (same size)"
    return None


def _whole_hash_problems(directory: Path, manifest: dict[str, Any]) -> list[str]:
    recorded = manifest.get("content_hash", "")
    actual = content_hash(directory)
    if actual == recorded:
        return []
    return [f"its files hash to {actual[:12]}, not the recorded content hash {recorded[:12]}"]


def move_aside(directory: Path) -> Path:
    """Rename a corrupt version out of the way (kept for a post-mortem; `wikigpt gc` removes it),
    so the version can be computed and published again."""
    directory = Path(directory)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = directory.with_name(f"{directory.name}{CORRUPT_MARK}{stamp}-{uuid.uuid4().hex[:6]}")
    os.rename(directory, aside)
    return aside


def intact_or_absent(out: Path, asset: str, log=print) -> dict[str, Any] | None:
    """The manifest of the intact version at `out`, or None when there is none to reuse: absent,
    or corrupt, in which case it is reported through `log` and moved aside. Call it holding the
    version's lock (wikigpt_core.version_lock), so no other run moves or writes it meanwhile."""
    if not is_complete(out):
        return None
    try:
        return verify_artifact(out, asset)
    except CorruptArtifact as e:
        aside = move_aside(out)
        log(f"{e}. It is not reused: moved aside to {aside.name} and recomputed.")
        return None

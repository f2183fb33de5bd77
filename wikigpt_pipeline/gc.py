"""`wikigpt gc`: remove artifact versions that nothing refers to any more.

A version directory `$WIKIGPT_HOME/<profile>/<asset>/<version>/` is kept while any
materialization recorded in the Dagster instance points at it (its `path` metadata) or an
asset's `current` pointer does. Everything else under the asset folders goes: unreferenced
versions, corrupt versions moved aside, and temp directories left by killed runs once they are a
day old (a younger one may belong to a stage that is still writing).

Scratch goes too: `_work/<asset>/<version>` (training checkpoints, finished parts) and its lock,
for a version that no kept version dir stands for, unless a running run holds that version's lock.
Removing it gives up resuming that version: a later run of it starts from scratch. A version's
scratch is removed while gc itself holds the lock, so no run can start on it meanwhile.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from wikigpt_core.artifacts import CURRENT
from wikigpt_core.config import WORK_DIR
from wikigpt_core.integrity import CORRUPT_MARK
from wikigpt_core.stages import ASSET_NAMES
from wikigpt_core.version_lock import LOCK_SUFFIX, held_if_free, lock_path

STALE_TEMP_S = 24 * 3600
_PAGE = 1_000


@dataclass
class Garbage:
    path: Path
    bytes: int
    reason: str
    lock: Path | None = None
    """For scratch: the version lock gc must take (and then remove) to remove `path`."""


def referenced_by_instance(instance: dg.DagsterInstance) -> set[Path]:
    paths: set[Path] = set()
    for name in ASSET_NAMES:
        cursor = None
        while True:
            page = instance.fetch_materializations(dg.AssetKey(name), limit=_PAGE, cursor=cursor)
            for record in page.records:
                meta = record.asset_materialization.metadata if record.asset_materialization else {}
                if "path" in meta:
                    paths.add(Path(str(meta["path"].value)).resolve())
            if not page.has_more:
                break
            cursor = page.cursor
    return paths


def find_garbage(instance: dg.DagsterInstance, home: Path, now: float | None = None) -> list[Garbage]:
    now = time.time() if now is None else now
    keep = referenced_by_instance(instance)
    found: list[Garbage] = []
    for profile in sorted(p for p in Path(home).iterdir() if p.is_dir()):
        for name in ASSET_NAMES:
            found += _version_garbage(profile / name, keep, now)
        found += _scratch_garbage(profile, keep)
    return found


def _version_garbage(root: Path, keep: set[Path], now: float) -> list[Garbage]:
    """In one asset's folder. Adds the target of its `current` pointer to `keep`."""
    if not root.is_dir():
        return []
    current = root / CURRENT
    if current.is_symlink():
        keep.add(current.resolve())
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name == CURRENT or entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name.startswith("."):  # a temp or moved-aside dir of an atomic write
            if now - entry.stat().st_mtime > STALE_TEMP_S:
                found.append(Garbage(entry, _size(entry), "left by an interrupted write"))
        elif CORRUPT_MARK in entry.name:
            found.append(Garbage(entry, _size(entry), "a corrupt version moved aside"))
        elif entry.resolve() not in keep:
            found.append(Garbage(entry, _size(entry), "no materialization refers to it"))
    return found


def _scratch_garbage(profile: Path, keep: set[Path]) -> list[Garbage]:
    """`_work/<asset>/<version>` scratch (and lock) of versions that are not kept and that no
    running run holds. Call after every asset's `current` is in `keep`."""
    found = []
    for asset in sorted(p for p in (profile / WORK_DIR).glob("*") if p.is_dir()):
        for version in sorted({e.name.removesuffix(LOCK_SUFFIX) for e in asset.iterdir()}):
            scratch, lock = asset / version, lock_path(asset / version)
            if (profile / asset.name / version).resolve() in keep or _in_use(lock):
                continue
            if scratch.exists():
                found.append(Garbage(scratch, _size(scratch), "scratch of a version no materialization "
                                     "refers to and no run is using", lock=lock))
            elif lock.exists():
                found.append(Garbage(lock, 0, "lock of a version no run is using", lock=lock))
    return found


def _in_use(lock: Path) -> bool:
    if not lock.exists():
        return False
    with held_if_free(lock) as free:
        return not free


def collect(instance: dg.DagsterInstance, home: Path, dry_run: bool = False) -> list[Garbage]:
    """Remove the garbage (unless `dry_run`); return what was (or would be) removed."""
    garbage = find_garbage(instance, home)
    if dry_run:
        return garbage
    return [g for g in garbage if _remove(g)]


def _remove(g: Garbage) -> bool:
    """Remove one piece; scratch only while gc holds its version's lock. False when a run took
    that lock since it was found: the scratch is in use again and stays."""
    if g.lock is None:
        shutil.rmtree(g.path)
        return True
    with held_if_free(g.lock) as free:
        if not free:
            return False
        if g.path != g.lock:
            shutil.rmtree(g.path, ignore_errors=True)
        g.lock.unlink(missing_ok=True)  # a run waiting on it notices, and locks a fresh file
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())

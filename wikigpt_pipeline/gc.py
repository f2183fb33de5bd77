"""`wikigpt gc`: remove artifact versions that nothing refers to any more.

A version directory `$WIKIGPT_HOME/<profile>/<asset>/<version>/` is kept while any
materialization recorded in the Dagster instance points at it (its `path` metadata) or an
asset's `current` pointer does. Everything else under the asset folders goes: unreferenced
versions, and temp directories left by killed runs once they are a day old (a younger one may
belong to a stage that is still writing).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from wikigpt_core.artifacts import CURRENT
from wikigpt_core.stages import ASSET_NAMES

STALE_TEMP_S = 24 * 3600
_PAGE = 1_000


@dataclass
class Garbage:
    path: Path
    bytes: int
    reason: str


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
            root = profile / name
            if not root.is_dir():
                continue
            current = root / CURRENT
            if current.is_symlink():
                keep.add(current.resolve())
            for entry in sorted(root.iterdir()):
                if entry.name == CURRENT or entry.is_symlink() or not entry.is_dir():
                    continue
                if entry.name.startswith("."):  # a temp or moved-aside dir of an atomic write
                    if now - entry.stat().st_mtime > STALE_TEMP_S:
                        found.append(Garbage(entry, _size(entry), "left by an interrupted write"))
                elif entry.resolve() not in keep:
                    found.append(Garbage(entry, _size(entry), "no materialization refers to it"))
    return found


def collect(instance: dg.DagsterInstance, home: Path, dry_run: bool = False) -> list[Garbage]:
    garbage = find_garbage(instance, home)
    if not dry_run:
        for g in garbage:
            shutil.rmtree(g.path)
    return garbage


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())

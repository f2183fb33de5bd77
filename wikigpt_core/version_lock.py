"""One run at a time per version: a file lock beside the version's scratch dir.

Two runs of the same version (two `wikigpt run`s, a retry beside a stuck run) would share
`_work/<asset>/<version>` and race to publish. So the runner holds `_work/<asset>/<version>.lock`
(an `flock`) around check, compute and publish: the first run computes, the second waits and
then finds the version published, a cache hit. The kernel releases an flock when its process
dies, so a killed run never leaves a stale lock; and a held lock tells `wikigpt gc` that a run
is using that scratch.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_SUFFIX = ".lock"


def lock_path(work: Path) -> Path:
    """The lock of the version whose scratch dir is `work`: a sibling file."""
    work = Path(work)
    return work.with_name(work.name + LOCK_SUFFIX)


@contextmanager
def version_lock(work: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the version's lock for the block; if another run holds it, say so and wait."""
    path = lock_path(work)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, blocking=False)
    if fd is None:
        if on_wait:
            on_wait(f"another run holds {path}: waiting for it to finish this version")
        fd = _acquire(path, blocking=True)
    try:
        yield path
    finally:
        _release(fd)


@contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Take the lock without waiting; yield whether it was free (and is now held by the block).
    `wikigpt gc` removes a version's scratch only inside this, so no run can start on it meanwhile."""
    fd = _acquire(path, blocking=False)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(fd)


def _acquire(path: Path, blocking: bool) -> int | None:
    """An fd holding the lock on the file now at `path` (created if absent), or None when another
    process holds it and not `blocking`. gc unlinks a lock file while holding it, so a waiter
    that then gets the lock holds an unlinked file: it must check that its fd is still the file
    at `path`, else lock the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _release(fd: int) -> None:
    # Unlock explicitly: a worker process forked while the lock was held shares this open file,
    # and closing our descriptor alone would leave the lock held for as long as that worker lives.
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

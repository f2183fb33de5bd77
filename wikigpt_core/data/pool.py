"""A bounded process pool: at most `2 x workers` tasks in flight, so a producer that reads a
dump lazily never queues more than a few tasks' worth of pages in memory."""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any


def resolve_workers(workers: int) -> int:
    """0 means one per CPU core available to this process."""
    if workers < 0:
        raise ValueError(f"workers = {workers}: use 0 (one per CPU core) or a positive count")
    if workers:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def bounded_map(fn: Callable[..., Any], args: Iterable[tuple], workers: int) -> Iterator[Any]:
    """Yield fn(*a) for each a (completion order). One worker, or a single task, runs in
    this process: no pool start-up cost for small inputs. Workers are spawned (not forked),
    which is safe when the caller has threads, and they only import the data modules."""
    it = iter(args)
    first = next(it, None)
    if first is None:
        return
    second = next(it, None)
    if workers <= 1 or second is None:
        yield fn(*first)
        if second is not None:
            yield fn(*second)
            for a in it:
                yield fn(*a)
        return
    pending: set[Future] = set()
    window = 2 * workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        try:
            for a in _chain(first, second, it):
                pending.add(ex.submit(fn, *a))
                if len(pending) >= window:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _chain(first: tuple, second: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield second
    yield from rest

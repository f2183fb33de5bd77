"""Runs whose process died are marked failed, and the pool slots they held are freed.

`wikigpt run` and `wikigpt refresh` execute in their own process (`execute_in_process`), which
no run launcher watches: after a `kill -9` (or an out-of-memory kill) the run stays STARTED for
good and keeps its `gpu` slot, so every later GPU stage waits forever. Dagster's run monitoring
cannot tell such a run is dead (it asks the run launcher, and no launcher started it), and its
daemon frees a run's slots only once the run is marked finished.

So each in-process run is tagged with the process that executes it (host, pid and the pid's
start time, so a reused pid is not mistaken for the owner), and every `wikigpt` process that
runs work first reaps: a run in progress whose owner on this host is gone is reported failed,
and any finished run still holding pool slots has them freed. A process that is waiting for a
slot keeps reaping in the background (`reaping`), so it also gets the slot of a run that dies
while it waits. Runs that a daemon launched are left to run monitoring (dagster.yaml).
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES, NOT_FINISHED_STATUSES

OWNER_TAG = "wikigpt/owner"
"""`host:pid:start` of the process executing an in-process run."""
REAP_INTERVAL_S = 15.0


def owner_tags() -> dict[str, str]:
    """Tags to put on a run this process executes itself."""
    pid = os.getpid()
    return {OWNER_TAG: f"{socket.gethostname()}:{pid}:{_start_time(pid)}"}


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def owner_is_gone(owner: str) -> bool:
    """True only when certain: the owner ran on this host, and its pid is free, a zombie, or
    now another process. An owner on another host is never judged from here."""
    host, pid_text, start = (owner.rsplit(":", 2) + ["", ""])[:3]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return state in ("Z", "X") or (bool(start) and _start_time(pid) != start)


def reap(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs whose owning process is gone, free the slots of finished runs;
    returns the ids of the runs marked failed."""
    dead = [run for run in instance.get_runs(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES))
            if OWNER_TAG in run.tags and owner_is_gone(run.tags[OWNER_TAG])]
    for run in dead:
        instance.report_run_failed(
            run, message=f"The process that executed this run ({run.tags[OWNER_TAG]}) is gone "
                         "(killed or crashed); marked failed by wikigpt, its pool slots freed.")
    _free_slots_of_finished_runs(instance)
    return [run.run_id for run in dead]


def _free_slots_of_finished_runs(instance: dg.DagsterInstance) -> None:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    holders = storage.get_concurrency_run_ids()
    if holders:
        for run in instance.get_runs(dg.RunsFilter(run_ids=list(holders), statuses=FINISHED_STATUSES)):
            storage.free_concurrency_slots_for_run(run.run_id)


@contextmanager
def reaping(instance: dg.DagsterInstance, interval_s: float = REAP_INTERVAL_S) -> Iterator[None]:
    """Reap every `interval_s` in a background thread until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                reap(instance)
            except Exception:  # a busy database now must not kill the run; the next pass retries
                pass

    thread = threading.Thread(target=loop, name="wikigpt-reaper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)

"""The persistent Dagster instance the CLI and `dagster dev` share.

DAGSTER_HOME defaults to $WIKIGPT_HOME/dagster. Its dagster.yaml is a symlink to the repo's
dagster.yaml (GPU pool limit, telemetry off), so editing the repo file takes effect everywhere.
Without a persistent DAGSTER_HOME, `dagster dev` uses a temp dir it deletes on exit, and run
history and staleness are lost.

Opening the instance creates its SQLite storage on first use, and two processes doing that at
once on a brand-new home collide ("table ... already exists"). So the home is prepared and the
instance opened under a file lock in DAGSTER_HOME: the first process creates the storage, the
others wait a moment and open what it created.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from wikigpt_core.config import wikigpt_home

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
CREATION_LOCK = ".wikigpt-instance.lock"
"""In DAGSTER_HOME: held while the home is prepared and its storage opened (created once)."""


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or wikigpt_home() / "dagster").expanduser().resolve()


@contextmanager
def _creation_lock(home: Path) -> Iterator[None]:
    # flock is released by the kernel when the process dies, so a crash never wedges the home.
    with (home / CREATION_LOCK).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _link_config(home: Path) -> None:
    target = home / "dagster.yaml"
    if not target.exists() and not target.is_symlink() and REPO_DAGSTER_YAML.exists():
        target.symlink_to(REPO_DAGSTER_YAML)


def _open_prepared_instance() -> dg.DagsterInstance:
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    with _creation_lock(home):
        _link_config(home)
        return dg.DagsterInstance.get()  # creates the storage when the home is new


def ensure_dagster_home() -> Path:
    """Prepare DAGSTER_HOME (config link, storage) for processes that open it themselves, such
    as `dagster dev`, whose webserver and daemon would otherwise race to create the storage."""
    _open_prepared_instance().dispose()
    return dagster_home()


def get_instance() -> dg.DagsterInstance:
    return _open_prepared_instance()

"""The persistent Dagster instance the CLI and `dagster dev` share.

DAGSTER_HOME defaults to $WIKIGPT_HOME/dagster. Its dagster.yaml is a symlink to the repo's
dagster.yaml (GPU pool limit, telemetry off), so editing the repo file takes effect everywhere.
Without a persistent DAGSTER_HOME, `dagster dev` uses a temp dir it deletes on exit, and run
history and staleness are lost.
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from wikigpt_core.config import wikigpt_home

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


def ensure_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or wikigpt_home() / "dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    target = home / "dagster.yaml"
    if not target.exists() and not target.is_symlink() and REPO_DAGSTER_YAML.exists():
        target.symlink_to(REPO_DAGSTER_YAML)
    return home


def get_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()

"""Stale status straight from Dagster's own resolver (the one behind the UI's "unsynced"),
and `refresh`: materialize missing and stale assets until nothing is stale.

Dagster marks staleness one layer at a time (a child becomes stale only once its parent has
re-run with a new DataVersion), so one pass is not enough: refresh loops to a fixpoint, each
pass a normal run recorded in the instance and visible in the UI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

from wikigpt_pipeline.jobs import PIPELINE_JOB


@dataclass
class AssetStatus:
    key: str
    status: str  # FRESH, STALE or MISSING
    causes: list[str]


def stale_status(instance: dg.DagsterInstance, defs: dg.Definitions) -> list[AssetStatus]:
    """Status of every asset, in topological order, with Dagster's stale causes."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance, asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    out = []
    for key in graph.toposorted_asset_keys:
        if not graph.get(key).is_materializable:
            continue
        status = resolver.get_status(key)
        causes = [_describe(c) for c in resolver.get_stale_causes(key)] if status == StaleStatus.STALE else []
        if status == StaleStatus.MISSING:
            causes = ["never materialized"]
        out.append(AssetStatus(key.to_user_string(), status.value, causes))
    return out


def _describe(cause) -> str:
    dep = f" ({cause.dependency.asset_key.to_user_string()})" if cause.dependency else ""
    return f"{cause.category.value.lower()}{dep}: {cause.reason}"


def to_run(statuses: list[AssetStatus]) -> list[str]:
    return [s.key for s in statuses if s.status in (StaleStatus.STALE.value, StaleStatus.MISSING.value)]


def refresh(instance: dg.DagsterInstance, defs: dg.Definitions,
            on_pass: Callable[[int, list[AssetStatus]], None] = lambda i, s: None,
            max_passes: int | None = None, run_config: dict | None = None) -> list[list[str]]:
    """Run passes until nothing is stale or missing; returns the asset keys of each pass."""
    job = defs.resolve_job_def(PIPELINE_JOB)
    passes: list[list[str]] = []
    limit = max_passes or len(list(defs.resolve_asset_graph().materializable_asset_keys)) + 1
    while True:
        statuses = stale_status(instance, defs)
        keys = to_run(statuses)
        if not keys:
            return passes
        if len(passes) >= limit:
            raise RuntimeError(f"still stale after {limit} passes: {keys}; see `wikigpt refresh --dry-run`")
        on_pass(len(passes) + 1, [s for s in statuses if s.key in keys])
        result = job.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey.from_user_string(k) for k in keys],
            raise_on_error=True, tags={"wikigpt/refresh_pass": str(len(passes) + 1)},
            run_config=run_config or {},
        )
        assert result.success
        passes.append(keys)

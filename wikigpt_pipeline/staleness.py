"""Stale status straight from Dagster's own resolver (the one behind the UI's "unsynced"),
and `refresh`: materialize missing and stale assets until nothing is stale.

Dagster marks staleness one layer at a time: a child becomes stale only once its parent has
re-run with a new DataVersion. Running only what is stale now would therefore take one pass per
layer, and an asset with inputs from several layers (eval_report reads three checkpoints) would
run once per pass, each time on a mix of old and new inputs. So a pass selects the stale and
missing assets **plus everything downstream of them**, in one run in topological order: each
asset then runs once, on its final inputs. Outputs are keyed by version, so a downstream asset
whose inputs did not change resolves to a version that is already on disk and is a cache hit
(no stage code runs): a rerun that writes identical bytes still stops the cascade.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

from wikigpt_pipeline.dead_runs import owner_tags
from wikigpt_pipeline.jobs import PIPELINE_JOB

REFRESH_PASS_TAG = "wikigpt/refresh_pass"
"""Run tag: which pass of a refresh the run is (`wikigpt refresh`, its --submit, the dump sensor)."""


@dataclass
class AssetStatus:
    key: str
    status: str  # FRESH, STALE or MISSING
    causes: list[str]


def _resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance, asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def stale_status(instance: dg.DagsterInstance, defs: dg.Definitions) -> list[AssetStatus]:
    """Status of every asset, in topological order, with Dagster's stale causes."""
    graph = defs.resolve_asset_graph()
    resolver = _resolver(instance, graph)
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


_NOT_FRESH = (StaleStatus.STALE, StaleStatus.MISSING)


def to_run(statuses: list[AssetStatus]) -> list[str]:
    """The assets that are stale or missing now."""
    return [s.key for s in statuses if s.status in (v.value for v in _NOT_FRESH)]


def not_fresh(instance: dg.DagsterInstance, graph) -> list[dg.AssetKey]:
    """Materializable assets that are stale or missing, in topological order."""
    resolver = _resolver(instance, graph)
    return [key for key in graph.toposorted_asset_keys
            if graph.get(key).is_materializable and resolver.get_status(key) in _NOT_FRESH]


def with_downstream(keys: list[dg.AssetKey], graph) -> list[dg.AssetKey]:
    """`keys` and every materializable asset downstream of them, in topological order: the
    selection of one refresh pass (see the module docstring)."""
    if not keys:
        return []
    closure = dg.AssetSelection.assets(*keys).downstream().resolve(graph)
    return [k for k in graph.toposorted_asset_keys if k in closure and graph.get(k).is_materializable]


def refresh_selection(instance: dg.DagsterInstance, graph) -> list[dg.AssetKey]:
    """What the next refresh pass runs: the stale and missing assets and their downstream."""
    return with_downstream(not_fresh(instance, graph), graph)


def refresh(instance: dg.DagsterInstance, defs: dg.Definitions,
            on_pass: Callable[[int, list[AssetStatus]], None] = lambda i, s: None,
            max_passes: int | None = None, run_config: dict | None = None) -> list[list[str]]:
    """Run passes until nothing is stale or missing; returns the asset keys of each pass.
    One pass normally suffices (it runs the stale assets' whole downstream); the loop is there
    for anything the pass itself leaves stale, bounded so that it can never spin."""
    job = defs.resolve_job_def(PIPELINE_JOB)
    graph = defs.resolve_asset_graph()
    passes: list[list[str]] = []
    limit = max_passes or len(list(graph.materializable_asset_keys)) + 1
    while True:
        statuses = stale_status(instance, defs)
        selection = with_downstream([dg.AssetKey.from_user_string(k) for k in to_run(statuses)], graph)
        keys = [k.to_user_string() for k in selection]
        if not keys:
            return passes
        if len(passes) >= limit:
            raise RuntimeError(f"still stale after {limit} passes: {keys}; see `wikigpt refresh --dry-run`")
        on_pass(len(passes) + 1, [s for s in statuses if s.key in keys])
        result = job.execute_in_process(
            instance=instance, asset_selection=selection,
            raise_on_error=True, tags={REFRESH_PASS_TAG: str(len(passes) + 1), **owner_tags()},
            run_config=run_config or {},
        )
        assert result.success
        passes.append(keys)

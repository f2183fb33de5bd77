"""`wikigpt run --submit` / `wikigpt refresh --submit`: put a run on the instance's run queue
instead of executing it in this process.

The run is created the way `dagster job launch` and the UI's Materialize button create theirs:
the code location is loaded from a workspace file (the repo's workspace.yaml by default), the
job (or the asset subset of it) is resolved there, and the run records that location's origin,
so `dagster-daemon run` (or the one `dagster dev` / `wikigpt ui` starts) can launch it. The
queued run coordinator then applies the instance's limits: `max_concurrent_runs`, tag limits,
and the `gpu` pool (one GPU stage at a time across all runs, whoever submitted them). Until a
daemon picks it up the run sits QUEUED, visible in the UI's Runs tab.

The instance must have a queued run coordinator (Dagster's default, and what
deploy/dagster.postgres.yaml sets): another coordinator would launch the run from this CLI's
process, whose code server goes away when the command exits.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import dagster as dg

from wikigpt_pipeline.jobs import PIPELINE_JOB
from wikigpt_pipeline.staleness import REFRESH_PASS_TAG

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
SUBMITTED_TAG = "wikigpt/submitted"
"""Run tag: which command put the run on the queue (`run` or `refresh`)."""


class SubmitError(RuntimeError):
    """The run could not be put on the queue (no queue, the code location failed to load...)."""


@dataclass
class Location:
    """The loaded code location that holds the pipeline job."""

    workspace: object  # dagster's WorkspaceRequestContext
    code_location: object
    repository: object  # RemoteRepository

    @property
    def asset_graph(self):
        """The location's asset graph, as the daemon and the UI see it."""
        return self.repository.asset_graph


def require_queue(instance: dg.DagsterInstance) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator

    coordinator = instance.run_coordinator
    if not isinstance(coordinator, QueuedRunCoordinator):
        raise SubmitError(
            f"the instance at DAGSTER_HOME={instance.root_directory} uses "
            f"{type(coordinator).__name__}, not a run queue; set `run_coordinator: {{module: "
            "dagster.core.run_coordinator, class: QueuedRunCoordinator}` in its dagster.yaml "
            "(deploy/dagster.postgres.yaml does), or run without --submit")


def queue_daemon_running(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon that moves the run queue has sent a heartbeat to this instance within
    the last two of its 30-second heartbeat intervals."""
    from dagster._daemon.controller import get_daemon_statuses
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    kind = QueuedRunCoordinatorDaemon.daemon_type()
    try:
        status = get_daemon_statuses(instance, [kind], heartbeat_tolerance_seconds=60).get(kind)
    except Exception:  # noqa: BLE001 - a storage without heartbeats: say nothing certain
        return False
    return bool(status and status.healthy)


@contextmanager
def open_location(instance: dg.DagsterInstance, workspace_file: Path | str = WORKSPACE,
                  job_name: str = PIPELINE_JOB) -> Iterator[Location]:
    """Load the workspace (each code location in its own code server, as `dagster job launch`
    does) and yield the location whose repository has `job_name`."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster.version import __version__

    workspace_file = Path(workspace_file).resolve()
    if not workspace_file.is_file():
        raise SubmitError(f"no workspace file at {workspace_file}")
    target = WorkspaceFileTarget(paths=[str(workspace_file)])
    with WorkspaceProcessContext(instance, target, version=__version__,
                                 code_server_log_level="WARNING") as process_context:
        workspace = process_context.create_request_context()
        found, errors = [], []
        for name in workspace.code_location_names:
            if workspace.has_code_location_error(name):
                errors.append(f"{name}: {workspace.get_code_location_error(name)}")
                continue
            location = workspace.get_code_location(name)
            for repo in location.get_repositories().values():
                if repo.has_job(job_name):
                    found.append(Location(workspace, location, repo))
        if len(found) != 1:
            detail = "; ".join(errors) or f"locations: {list(workspace.code_location_names)}"
            what = "no code location" if not found else f"{len(found)} code locations"
            raise SubmitError(f"{what} in {workspace_file} define the job {job_name!r} ({detail})")
        yield found[0]


def submit(instance: dg.DagsterInstance, location: Location,
           assets: Sequence[dg.AssetKey] | None = None, tags: dict[str, str] | None = None,
           job_name: str = PIPELINE_JOB) -> dg.DagsterRun:
    """Create a run of `job_name` (only `assets`, with their checks, when given) in the loaded
    location and hand it to the instance's run coordinator. Returns the run as stored: QUEUED."""
    from dagster._core.definitions.selector import JobSubsetSelector

    require_queue(instance)
    selection = frozenset(assets) if assets else None
    remote_job = location.code_location.get_job(JobSubsetSelector(
        location_name=location.code_location.name, repository_name=location.repository.name,
        job_name=job_name, op_selection=None, asset_selection=selection))
    plan = location.code_location.get_execution_plan(
        remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance)
    run = instance.create_run(
        job_name=job_name, run_id=None, run_config={}, status=dg.DagsterRunStatus.NOT_STARTED,
        tags={**remote_job.tags, **(tags or {})}, root_run_id=None, parent_run_id=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        job_snapshot=remote_job.job_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
        asset_selection=selection, asset_check_selection=None,
        resolved_op_selection=None, op_selection=None,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_graph=location.asset_graph,
    )
    return instance.submit_run(run.run_id, location.workspace)


def submit_run(instance: dg.DagsterInstance, workspace_file: Path | str = WORKSPACE,
               assets: Sequence[str] | None = None) -> tuple[dg.DagsterRun, list[str]]:
    """`wikigpt run --submit`: one run of the whole pipeline job (or of `assets`). Returns the
    run and the asset keys it materializes."""
    require_queue(instance)
    with open_location(instance, workspace_file) as location:
        keys = _keys(location, assets)
        run = submit(instance, location, keys if assets else None, tags={SUBMITTED_TAG: "run"})
    return run, [k.to_user_string() for k in keys]


def submit_refresh(instance: dg.DagsterInstance, workspace_file: Path | str = WORKSPACE
                   ) -> tuple[dg.DagsterRun | None, list[str]]:
    """`wikigpt refresh --submit`: one run of the refresh selection (the stale and missing
    assets plus their downstream, `staleness.refresh_selection`) as the submitted code location
    resolves it. (None, []) when nothing is stale."""
    from wikigpt_pipeline import staleness

    require_queue(instance)
    with open_location(instance, workspace_file) as location:
        selection = staleness.refresh_selection(instance, location.asset_graph)
        if not selection:
            return None, []
        run = submit(instance, location, selection,
                     tags={SUBMITTED_TAG: "refresh", REFRESH_PASS_TAG: "1"})
    return run, [k.to_user_string() for k in selection]


def _keys(location: Location, assets: Sequence[str] | None) -> list[dg.AssetKey]:
    """The requested assets, checked against the job, in the graph's order (all when None)."""
    graph = location.asset_graph
    job_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    if not assets:
        return job_keys
    wanted = {dg.AssetKey.from_user_string(a) for a in assets}
    unknown = sorted(k.to_user_string() for k in wanted - set(job_keys))
    if unknown:
        raise SubmitError(f"unknown asset(s) {unknown}; the job has "
                          f"{[k.to_user_string() for k in job_keys]}")
    return [k for k in job_keys if k in wanted]


# --------------------------------------------------------------------------- waiting


def wait(instance: dg.DagsterInstance, run_id: str, on_event: Callable[[str], None] = print,
         poll_s: float = 1.0, timeout_s: float | None = None) -> dg.DagsterRun:
    """Follow a submitted run until it ends: one line per status change (QUEUED, STARTING,
    STARTED, SUCCESS...) and per asset step (started, done, failed), in the order of the
    instance's event log. Returns the finished run."""
    cursor, t0 = None, time.monotonic()
    while True:
        run = instance.get_run_by_id(run_id)  # before reading: a finished run's events are all in
        if run is None:
            raise SubmitError(f"run {run_id} is not in the instance")
        conn = instance.get_records_for_run(run_id, cursor=cursor)
        for record in conn.records:
            line = _describe(run_id, record.event_log_entry)
            if line:
                on_event(line)
        cursor = conn.cursor
        if conn.has_more:
            continue
        if run.is_finished:
            return run
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"run {run_id} still {run.status.value} after {timeout_s:.0f}s")
        time.sleep(poll_s)


_RUN_EVENTS = {
    dg.DagsterEventType.RUN_ENQUEUED: "QUEUED", dg.DagsterEventType.RUN_STARTING: "STARTING",
    dg.DagsterEventType.RUN_START: "STARTED", dg.DagsterEventType.RUN_SUCCESS: "SUCCESS",
    dg.DagsterEventType.RUN_FAILURE: "FAILURE", dg.DagsterEventType.RUN_CANCELED: "CANCELED",
}


def _describe(run_id: str, entry) -> str | None:
    event = entry.dagster_event
    if event is None:
        return None
    kind = event.event_type
    if kind in _RUN_EVENTS:
        return f"run {run_id[:8]} {_RUN_EVENTS[kind]}"
    if not event.step_key:
        return None
    if kind == dg.DagsterEventType.ENGINE_EVENT and "blocked by limit for pool" in (entry.message or ""):
        return f"  {event.step_key:<20} waiting: {entry.message}"  # e.g. the gpu pool's one slot
    if kind == dg.DagsterEventType.STEP_START:
        return f"  {event.step_key:<20} started"
    if kind == dg.DagsterEventType.STEP_SUCCESS:
        return f"  {event.step_key:<20} done in {event.event_specific_data.duration_ms / 1000:.1f}s"
    if kind == dg.DagsterEventType.STEP_FAILURE:
        error = event.event_specific_data.error
        return f"  {event.step_key:<20} FAILED: {(error.message if error else '').strip()[:200]}"
    return None


def materializations(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, dict]]:
    """(asset key, metadata values) of each materialization the run recorded, in order."""
    out = []
    for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1000).records:
        mat = record.event_log_entry.dagster_event.event_specific_data.materialization
        out.append((mat.asset_key.to_user_string(), {k: v.value for k, v in mat.metadata.items()}))
    return out

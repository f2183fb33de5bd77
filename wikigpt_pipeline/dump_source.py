"""The Wikipedia dump as an observable source, and the sensor that picks up new dumps.

`build_dump_source(settings)`: the source asset `wikipedia_dump`. Observing it asks the
configured source for the identity of the dump it names (`wikigpt_core.data.dump.observe_dump`):
for `enwiki/latest`, the newest dump whose multistream files the dump site reports done, as
`<wiki>/<date>:<sha1 of the file>:<sha1 of the index>`; for a fixed date, that dump's published
SHA-1s; for `sample` or a local file, its checksum or size and mtime. The identity is the
observation's DataVersion; `wiki_dump` depends on the source, so a new identity marks it stale.
Nothing is fetched when the definitions load: only an observation (the sensor, "Observe
sources" in the UI, or a `wiki_dump` run with no observation of its dump name yet) talks to
the dump site. A `wiki_dump` run fetches the dump of the last observation
(`identity_for_run`), and that identity names its version directory.

`build_dump_sensor(settings)`: off by default (turn it on under Automation in the UI). Every
`minimum_interval_seconds` it observes the source. When the identity is new (a dump finished),
it records the observation and starts a refresh: each tick requests one run of the assets that
are stale or missing by Dagster's own resolver plus their downstream (the refresh pass of
`wikigpt_pipeline.staleness`), waits while that run is queued or running, and stops once nothing
is stale. Outputs are keyed by version, so a downstream asset whose inputs the new dump did not
change is a cache hit: only what the new dump changes executes. A dump site that cannot be
reached, or a newest dump still in progress, requests nothing.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from wikigpt_core.config import DumpConfig, Settings
from wikigpt_core.data.dump import observe_dump
from wikigpt_core.data.dumpsite import LATEST
from wikigpt_core.data.sources import parse_dump_name
from wikigpt_core.data.errors import DumpError
from wikigpt_pipeline.jobs import PIPELINE_JOB
from wikigpt_pipeline.progress import PROGRESS
from wikigpt_pipeline.retries import retry_transient_only
from wikigpt_pipeline.staleness import REFRESH_PASS_TAG, refresh_selection

DUMP_SOURCE = "wikipedia_dump"
SENSOR_NAME = "new_dump_sensor"
SENSOR_TAG = "wikigpt/dump_sensor"
IDENTITY_TAG = "wikigpt/dump_identity"
DEFAULT_INTERVAL_S = 6 * 3600
"""Dumps are published about twice a month; a few checks a day are plenty."""
_IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]

Observe = Callable[[DumpConfig], str]


def build_dump_source(settings: Settings, observe: Observe = observe_dump,
                      group: str = "data") -> dg.SourceAsset:
    def wikipedia_dump(context) -> dg.DataVersion:
        identity = observe(settings.dump)
        context.log.info(f"{settings.dump.source}: {identity}")
        return dg.DataVersion(identity)

    with warnings.catch_warnings():  # observable sources are marked beta; say it once, here
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.observable_source_asset(
            wikipedia_dump, name=DUMP_SOURCE, group_name=group,
            description="The Wikipedia dump WIKIGPT_DUMP names, as published: its observed "
                        "DataVersion is the finished dump's date and SHA-1s.")


@dataclass
class _Cursor:
    identity: str = ""
    """The last identity recorded as an observation."""
    refreshing: bool = False
    """A refresh for `identity` is under way (passes still to run)."""
    passes: int = 0
    """Runs requested so far in this refresh."""

    @classmethod
    def load(cls, raw: str | None) -> "_Cursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def pass_tags(identity: str, n: int) -> dict[str, str]:
    return {SENSOR_TAG: SENSOR_NAME, IDENTITY_TAG: identity[:200], REFRESH_PASS_TAG: str(n)}


def _pass_run(instance: dg.DagsterInstance, identity: str, n: int) -> dg.DagsterRun | None:
    """The run the sensor requested as pass n of the refresh for `identity` (None if not created)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags=pass_tags(identity, n)), limit=1)
    return runs[0] if runs else None


def record_observation(instance: dg.DagsterInstance, identity: str, source: str) -> None:
    """Store the source's observation, exactly as an observation run would."""
    instance.report_runless_asset_event(dg.AssetObservation(
        asset_key=DUMP_SOURCE, tags={DATA_VERSION_TAG: identity},
        metadata={"source": source, "identity": identity}))


def last_observed(instance: dg.DagsterInstance) -> str | None:
    record = instance.get_latest_data_version_record(dg.AssetKey(DUMP_SOURCE), is_source=True)
    event = record.asset_observation if record else None
    return event.tags.get(DATA_VERSION_TAG) if event is not None and event.tags else None


def identity_for_run(context: dg.AssetExecutionContext, cfg: DumpConfig) -> str:
    """The dump identity a `wiki_dump` run materializes: the source's last observation when it
    is of the configured dump name (so the run fetches exactly what was observed), else a fresh
    observation (network for a dump name, a stat for a local file), recorded so the source's
    DataVersion and the materialization's provenance agree."""
    instance = context.instance
    last = last_observed(instance)
    name = parse_dump_name(cfg.source.strip())
    if name is not None and last:
        wiki, date = name
        if last.startswith(f"{wiki}/" if date == LATEST else f"{wiki}/{date}:"):
            return last
    identity = _observe_for_run(cfg)
    if identity != last:
        record_observation(instance, identity, cfg.source)
        # Dagster read the inputs' versions when the step started; let it read this one again,
        # or the materialization's provenance would name the previous observation.
        context.get_step_execution_context().wipe_input_asset_version_info(dg.AssetKey(DUMP_SOURCE))
    return identity


def _observe_for_run(cfg: DumpConfig) -> str:
    """observe_dump, saying on the console what it waits for; a 404 or a malformed reply fails
    the step at once, only a transient error (timeout, 5xx, connection reset) is retried."""
    if parse_dump_name(cfg.source.strip()) is not None:
        PROGRESS.info(f"{'wiki_dump':<20} asking {cfg.base_url} for {cfg.source}'s published checksums")
    with retry_transient_only("wiki_dump"):
        return observe_dump(cfg)


def build_dump_sensor(settings: Settings, *, observe: Observe = observe_dump, job_name: str = PIPELINE_JOB,
                      minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
                      default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED) -> dg.SensorDefinition:
    @dg.sensor(name=SENSOR_NAME, job_name=job_name, minimum_interval_seconds=minimum_interval_seconds,
               default_status=default_status,
               description="Observes the Wikipedia dump; when a new dump is finished, reruns the stale "
                           "assets and their downstream until nothing is stale (unchanged inputs are cache hits).")
    def new_dump_sensor(context: dg.SensorEvaluationContext):
        cursor = _Cursor.load(context.cursor)
        instance = context.instance
        try:
            identity = observe(settings.dump)
        except DumpError as e:  # unreachable site, dump in progress, missing file: wait
            return dg.SkipReason(f"cannot observe {settings.dump.source}: {e}")
        if identity != cursor.identity:
            if identity != last_observed(instance):
                record_observation(instance, identity, settings.dump.source)
            cursor = _Cursor(identity=identity, refreshing=True)
            context.log.info(f"new dump identity {identity}: refreshing stale assets")
        if not cursor.refreshing:
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no new dump ({identity})"), cursor=cursor.dump())
        if cursor.passes:
            last = _pass_run(instance, identity, cursor.passes)
            if last is not None and last.status in _IN_FLIGHT:
                return dg.SensorResult(skip_reason=dg.SkipReason(f"pass {cursor.passes} ({last.run_id}) "
                                                                 "is still queued or running"),
                                       cursor=cursor.dump())
            if last is not None and last.status != dg.DagsterRunStatus.SUCCESS:
                cursor.refreshing = False  # a failed pass stops the refresh; the failure sensor reports it
                return dg.SensorResult(skip_reason=dg.SkipReason(
                    f"pass {cursor.passes} ({last.run_id}) ended {last.status.value}; refresh stopped "
                    "(fix and run `wikigpt refresh`, or wait for the next dump)"), cursor=cursor.dump())
        keys = refresh_selection(instance, context.repository_def.asset_graph)
        if not keys:
            cursor.refreshing = False
            return dg.SensorResult(skip_reason=dg.SkipReason(f"up to date with {identity}"), cursor=cursor.dump())
        cursor.passes += 1
        request = dg.RunRequest(run_key=f"{identity}#{cursor.passes}", asset_selection=keys,
                                tags=pass_tags(identity, cursor.passes))
        return dg.SensorResult(run_requests=[request], cursor=cursor.dump())

    return new_dump_sensor

"""`stage_asset`: the one Dagster asset shape, built from a stage's registry declaration.

For every run the asset resolves the stage's spec (config sections, the upstreams' current
versions and their content hashes, the versioned out/work dirs), then:

- if that version's directory is already complete and its bytes match its manifest, records a
  cache hit: the materialization points at those bytes and carries their content hash, and no
  stage code runs (a damaged version is named in the log, moved aside and recomputed);
- else runs the stage: in this process, or through the `launcher` resource (a local subprocess
  or a rented GPU, over Dagster Pipes) with the spec written to a file.

Either way the asset's `current` pointer moves to that version. Versioning:

- code_version = "<stage version>-<hash of its config sections>" (wikigpt_core.spec), so
  editing a config value marks exactly that asset stale;
- DataVersion = content hash of what consumers read, so a rerun that reproduces its outputs
  marks nothing downstream stale.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg

from wikigpt_core.artifacts import content_hash, point_current
from wikigpt_core.config import Settings, asset_root
from wikigpt_core.integrity import intact_or_absent
from wikigpt_core.pipes_bridge import StageReporter
from wikigpt_core.spec import StageSpec
from wikigpt_core.stages import Stage, fingerprint, resolve_spec, stage_code_version
from wikigpt_core.version_lock import version_lock
from wikigpt_pipeline import previews
from wikigpt_pipeline.automation import data_eager
from wikigpt_pipeline.dump_source import DUMP_SOURCE, identity_for_run
from wikigpt_pipeline.metadata import PATH_KEY, materialize_result, to_metadata
from wikigpt_pipeline.progress import PROGRESS, StageProgress
from wikigpt_pipeline.retries import retry_transient_only

GPU_POOL = "gpu"  # one GPU stage at a time; see dagster.yaml
RECOMPUTE_TAG = "wikigpt/recompute"
"""Run tag: "true" runs the stages even where their version is complete, to check that a stage
reproduces its bytes: the published version is kept, and the run fails if the bytes differ."""
NETWORK_RETRY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL)


class ContextReporter(StageReporter):
    """The stage reporter of an in-process stage: every metrics call goes to the Dagster run
    log, just as a launched stage's Pipes messages do; the console (PROGRESS) gets a training
    progress line (step/total, loss, tok/s, ETA) every few seconds."""

    def __init__(self, stage: str, context: dg.AssetExecutionContext) -> None:
        super().__init__(stage)
        self.context = context
        self.progress = StageProgress(stage)

    def log(self, message: str) -> None:
        self.context.log.info(f"[{self.stage}] {message}")

    def report(self, result) -> None:
        self.context.log.info(f"[{self.stage}] done: {result.path} ({result.content_hash[:12]})")

    def _emit_metrics(self, metrics, step: int) -> None:
        from wikigpt_core.pipes_bridge import _format_metrics

        self.context.log.info(f"[{self.stage}] {_format_metrics(metrics, step)}")
        self.progress.metrics(metrics, step)


def published_intact(context: dg.AssetExecutionContext, spec: StageSpec) -> dict | None:
    """The manifest of the spec's version when it is published and its bytes match it. A corrupt
    one is reported by name and moved aside, so the stage recomputes it. Under the version's
    lock: while another run computes this version, this waits for its result."""
    with version_lock(spec.work, on_wait=context.log.info):
        return intact_or_absent(spec.out, spec.stage, log=context.log.warning)


def cache_hit(spec: StageSpec, manifest: dict) -> dg.MaterializeResult:
    metadata = {PATH_KEY: dg.MetadataValue.path(str(spec.out)), **to_metadata(manifest.get("stats", {}))}
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(manifest["content_hash"]))


def launch(context: dg.AssetExecutionContext, stage: Stage, spec: StageSpec) -> dg.MaterializeResult:
    """Run `python -m wikigpt_core.run STAGE --spec FILE` through the `launcher` resource. The
    artifact that comes back must hash to the DataVersion the stage reported, so a partial copy
    can never be recorded as the materialization."""
    with tempfile.TemporaryDirectory(prefix=f"wikigpt-{stage.name}-spec-") as tmp:
        spec_file = spec.write(Path(tmp) / "spec.json")
        result = context.resources.launcher.run_stage(context, stage.name, ["--spec", str(spec_file)],
                                                      [spec.out])
    reported = result.data_version.value if result.data_version else None
    local = content_hash(spec.out)
    if reported != local:
        raise RuntimeError(f"{stage.name}: artifact at {spec.out} hashes to {local[:12]}, but the "
                           f"stage reported {str(reported)[:12]}; rerun the asset")
    return result


@contextmanager
def services(context: dg.AssetExecutionContext, stage: Stage, settings: Settings,
             figures: dict) -> Iterator[dict[str, str]]:
    """Endpoints a stage needs for this run only: with `[teacher] launch = "skypilot"`, a teacher
    rented through the launcher for the stage's work and torn down when it ends (its GPU-hours
    and cost go into `figures`). Otherwise the stage uses `[teacher] base_url`."""
    if not (stage.teacher and settings.teacher.launch == "skypilot"):
        yield {}
        return
    if settings.teacher.backend == "offline":
        raise ValueError("[teacher] launch = \"skypilot\" rents a model, but backend = \"offline\" "
                         "would not use it; set backend = \"openai\" or launch = \"none\"")
    with context.resources.launcher.teacher_endpoint(context, figures) as url:
        yield {"teacher_url": url}


def stage_asset(settings: Settings, stage: Stage) -> dg.AssetsDefinition:
    fp = fingerprint(stage, settings)  # local, no network: the dump name or a local file's stat
    needs_launcher = stage.launched or stage.teacher

    @dg.asset(
        name=stage.name,
        deps=list(stage.inputs) + ([DUMP_SOURCE] if stage.reads_dump else []),
        code_version=stage_code_version(stage, settings, fp),
        group_name=stage.group,
        description=stage.description,
        kinds=set(stage.kinds) or None,
        pool=GPU_POOL if stage.gpu else None,
        retry_policy=NETWORK_RETRY if stage.network else None,
        automation_condition=data_eager() if stage.automation else None,
        required_resource_keys={"launcher"} if needs_launcher else None,
    )
    def _asset(context) -> dg.MaterializeResult:  # context: AssetExecutionContext
        # A dump-fed stage: the observed dump's identity (date + SHA-1s) names its version
        run_fp = identity_for_run(context, settings.dump) if stage.reads_dump else fp
        recompute = context.run.tags.get(RECOMPUTE_TAG) == "true"
        spec = dataclasses.replace(resolve_spec(settings, stage.name, fingerprint_=run_fp), recompute=recompute)
        figures: dict = {}  # what the run's services cost (a rented teacher)
        published = published_intact(context, spec)  # a recompute too must not keep a corrupt one
        hit = published is not None and not recompute
        t0 = time.monotonic()
        PROGRESS.info(f"{stage.name:<20} {'cached' if hit else 'running'}  {spec.out}")
        try:
            if hit:
                context.log.info(f"{stage.name}: version {spec.version} is complete at {spec.out}; "
                                 "recording it without running the stage")
                result = cache_hit(spec, published)
            else:
                with services(context, stage, settings, figures) as endpoints, \
                        retry_transient_only(stage.name):  # bad input: fail now, no retries
                    spec = dataclasses.replace(spec, services=endpoints)
                    result = run_stage(context, stage, spec)
        except Exception as e:
            PROGRESS.info(f"{stage.name:<20} FAILED after {time.monotonic() - t0:.1f}s: {str(e)[:200]}")
            context.log.exception(f"{stage.name} failed; no version was written and earlier "
                                  f"versions under {asset_root(settings, stage.name)} are untouched")
            raise
        point_current(spec.out)
        PROGRESS.info(f"{stage.name:<20} {'cache hit' if hit else 'done'} in {time.monotonic() - t0:.1f}s")
        metadata = {**(result.metadata or {}), PATH_KEY: dg.MetadataValue.path(str(spec.out)),
                    "version": spec.version, "cache_hit": hit, **figures,
                    **_previews(context, stage, spec.out)}
        return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)

    return _asset


def run_stage(context, stage: Stage, spec: StageSpec) -> dg.MaterializeResult:
    if stage.launched:
        return launch(context, stage, spec)
    from wikigpt_core.run import run_spec

    # The same runner as the CLI, reporting to this run's log instead of Pipes or the terminal.
    result = run_spec(spec, ContextReporter(stage.name, context))
    return materialize_result(result)


def _previews(context, stage: Stage, out: Path) -> dict[str, dg.MetadataValue]:
    """A preview is a nicety: if it cannot be built, say so and keep the materialization."""
    if not stage.preview:
        return {}
    try:
        return getattr(previews, stage.preview)(out)
    except Exception as e:  # noqa: BLE001 - previews never fail a stage
        context.log.warning(f"no preview for {out}: {e!r}")
        return {}


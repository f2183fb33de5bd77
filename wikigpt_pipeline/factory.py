"""`stage_asset`: one decorator that turns a core stage call into a thin Dagster asset.

Versioning (what makes "rerun only what is stale" exact):
- code_version = "<stage code version>-<hash of the stage's config sections>", so editing a
  config value marks exactly that asset (and, once it reruns with new bytes, its downstream)
  stale;
- DataVersion = content hash of the artifact, so a rerun that writes identical bytes marks
  nothing downstream stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from wikigpt_core.artifacts import StageResult, content_hash, read_manifest
from wikigpt_core.config import Settings, artifact_dir, work_dir
from wikigpt_pipeline.metadata import materialize_result


@dataclass
class StageIO:
    """Paths a stage reads and writes, resolved from settings."""

    settings: Settings
    name: str
    deps: tuple[str, ...]

    @property
    def out(self) -> Path:
        return artifact_dir(self.settings, self.name)

    @property
    def work(self) -> Path:
        return work_dir(self.settings, self.name)

    def input(self, dep: str) -> Path:
        """The finished artifact of an upstream asset (raises a clear error if missing)."""
        if dep not in self.deps:
            raise KeyError(f"{self.name} does not depend on {dep}")
        path = artifact_dir(self.settings, dep)
        read_manifest(path)  # raises FileNotFoundError naming the asset to materialize
        return path

    def manifest(self, asset: str) -> dict[str, Any]:
        """Any upstream asset's manifest (stats, content hash), for lineage figures."""
        return read_manifest(artifact_dir(self.settings, asset))

    def launch(self, context: dg.AssetExecutionContext, stage: str, inputs: dict[str, Path],
               resumable: bool = True) -> dg.MaterializeResult:
        """Run `python -m wikigpt_core.<stage>` through the `launcher` resource (a local
        subprocess or a rented GPU), over Dagster Pipes. `inputs` maps CLI flags to upstream
        artifact dirs; `resumable` stages also get their --work scratch dir. The artifact that
        comes back must hash to the DataVersion the stage reported, so a partial copy can never
        be recorded as the materialization."""
        args = [a for flag, path in inputs.items() for a in (flag, str(path))]
        args += ["--out", str(self.out), "--profile", self.settings.profile]
        if resumable:  # stages with resumable scratch (training) take a --work dir
            args += ["--work", str(self.work)]
        result = context.resources.launcher.run_stage(context, stage, args, [self.out])
        reported = result.data_version.value if result.data_version else None
        local = content_hash(self.out)
        if reported != local:
            raise RuntimeError(f"{self.name}: artifact at {self.out} hashes to {local[:12]}, but the "
                               f"stage reported {str(reported)[:12]}; rerun the asset")
        return result


def code_version(settings: Settings, version: str, sections: tuple[str, ...], extra: str = "") -> str:
    digest = settings.sections_hash(list(sections))
    return f"{version}-{digest}" + (f"-{extra}" if extra else "")


def stage_asset(
    settings: Settings,
    *,
    name: str,
    deps: tuple[str, ...],
    sections: tuple[str, ...],
    version: str,
    group: str,
    kinds: set[str] | None = None,
    pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    fingerprint: str = "",
    automation_condition: dg.AutomationCondition | None = None,
    resources: set[str] | None = None,
    preview: Callable[[Path], dict[str, dg.MetadataValue]] | None = None,
) -> Callable[[Callable[[dg.AssetExecutionContext, StageIO], StageResult]], dg.AssetsDefinition]:
    """Decorate `compute(context, io) -> StageResult` (in-process stage) or a launched stage's
    `MaterializeResult` (see StageIO.launch); the docstring becomes the description."""

    def decorator(compute: Callable[[dg.AssetExecutionContext, StageIO], StageResult]) -> dg.AssetsDefinition:
        @dg.asset(
            name=name,
            deps=list(deps),
            code_version=code_version(settings, version, sections, fingerprint),
            group_name=group,
            description=compute.__doc__,
            kinds=kinds,
            pool=pool,
            retry_policy=retry_policy,
            automation_condition=automation_condition,
            required_resource_keys=resources,
        )
        def _asset(context) -> dg.MaterializeResult:  # context: AssetExecutionContext
            io = StageIO(settings, name, deps)
            try:
                result = compute(context, io)
            except Exception:
                context.log.exception(f"{name} failed; the previous artifact at {io.out} is untouched")
                raise
            extra = _previews(context, preview, io.out)
            if isinstance(result, dg.MaterializeResult):  # launched: metadata came over Pipes
                metadata = {"path": dg.MetadataValue.path(str(io.out)), **(result.metadata or {}), **extra}
                return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)
            context.log.info(f"{name}: wrote {result.path} (content {result.content_hash[:12]})")
            return materialize_result(result, extra)

        return _asset

    return decorator


def _previews(context, preview, out: Path) -> dict[str, dg.MetadataValue]:
    """A preview is a nicety: if it cannot be built, say so and keep the materialization."""
    if preview is None:
        return {}
    try:
        return preview(out)
    except Exception as e:  # noqa: BLE001 - previews never fail a stage
        context.log.warning(f"no preview for {out}: {e!r}")
        return {}

"""Run a stage CLI as a subprocess on this machine (CPU or a local GPU) through Dagster Pipes."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not re-exported at top level

from wikigpt_pipeline.launchers.command import stage_command
from wikigpt_pipeline.launchers.results import StageLaunchError, build_result, error_message
from wikigpt_pipeline.progress import StageProgress


def stage_argv(stage: str, cli_args: Sequence[str]) -> list[str]:
    """`python -m ...` arguments: a registry stage runs through the one stage CLI
    (`wikigpt_core.run STAGE --spec FILE`); a dotted name is taken as a module of its own."""
    if "." in stage:
        return ["-m", stage, *map(str, cli_args)]
    return ["-m", "wikigpt_core.run", stage, *map(str, cli_args)]


class _RememberingReader(dg.PipesTempFileMessageReader):
    """The default temp-file reader, keeping its handler so that a failed run's messages (the
    stage's traceback) can still be read after `PipesSubprocessClient.run` raised."""

    handler: dg.PipesMessageHandler | None = None
    progress: StageProgress | None = None

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[dict]:
        self.handler = handler
        handle = handler.handle_message

        def handle_and_show(message):
            if self.progress:
                self.progress.pipes_message(message)
            return handle(message)

        handler.handle_message = handle_and_show
        with super().read_messages(handler) as params:
            yield params


def run_local(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    stage: str,
    cli_args: Sequence[str],
    outputs: Sequence[Path],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    nproc: int = 1,
) -> dg.MaterializeResult:
    """`python -m wikigpt_core.run <stage> *cli_args` under Pipes; the result carries the stage's
    reported metadata and data_version plus `backend` and `wall_seconds`. With nproc > 1 the
    stage runs under torchrun in that many processes (`command.stage_command`)."""
    reader = _RememberingReader()
    reader.progress = StageProgress(stage)
    client = dg.PipesSubprocessClient(env=dict(env or {}), cwd=cwd, message_reader=reader)
    command = stage_command(stage_argv(stage, cli_args), nproc)
    context.log.info(f"[local] {' '.join(command)}")
    t0 = time.monotonic()
    try:
        invocation = client.run(context=context, command=command)
    except DagsterPipesExecutionError as exc:
        messages = reader.handler.get_custom_messages() if reader.handler else ()
        remote_error = error_message(messages)
        detail = f"\n--- stage traceback ---\n{remote_error}" if remote_error else ""
        raise StageLaunchError(f"stage {stage!r} failed locally: {exc}{detail}") from exc
    seconds = time.monotonic() - t0
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        raise StageLaunchError(f"stage {stage!r} finished but did not write {missing}")
    return build_result(
        stage,
        invocation.get_results(implicit_materializations=False),
        invocation.get_custom_messages(),
        {"backend": "local", "wall_seconds": round(seconds, 2), "processes": nproc},
    )

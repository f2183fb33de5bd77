"""Run a stage CLI as a subprocess on this machine (CPU or a local GPU) through Dagster Pipes.

The stage process is tied to the process that launched it: it runs in its own process group
(so it, and torchrun's workers, can be stopped together) and, on Linux, receives SIGTERM when
its launcher dies, even by SIGKILL. So a killed `wikigpt run` leaves no orphan that trains on
and publishes a version no run records.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import dagster as dg
from dagster._core.errors import (  # not re-exported at top level
    DagsterExecutionInterruptedError,
    DagsterPipesExecutionError,
)

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


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
"""Loaded here, so the forked child only calls into an already-loaded library."""
STOP_GRACE_S = 20.0
"""After SIGINT, how long a stage may take to exit before its process group gets SIGKILL."""


def tied_popen_kwargs() -> dict[str, Any]:
    """`subprocess.Popen` arguments that start a process in its own process group and, on
    Linux, have the kernel send it SIGTERM when this process dies."""
    kwargs: dict[str, Any] = {"process_group": 0}
    if _LIBC is not None:
        kwargs["preexec_fn"] = _die_with(os.getpid())
    return kwargs


def _die_with(parent_pid: int) -> Callable[[], None]:
    def in_child() -> None:
        # SIGTERM, not SIGKILL: torchrun stops its workers on SIGTERM; a plain stage just exits.
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return in_child


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT to the process's group (the stage and any workers it started), then SIGKILL
    to whatever is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class _TiedSubprocessClient(dg.PipesSubprocessClient):
    """PipesSubprocessClient.run, with the stage process tied to this one (`tied_popen_kwargs`)
    and its whole process group stopped when the step is interrupted or fails."""

    def run(self, *, context, extras=None, command, env=None, cwd=None):  # noqa: D102
        with dg.open_pipes_session(context=context, context_injector=self.context_injector,
                                   message_reader=self.message_reader, extras=extras) as session:
            process = subprocess.Popen(
                command, cwd=cwd or self.cwd,
                env={**os.environ, **self.env, **(env or {}), **session.get_bootstrap_env_vars()},
                **tied_popen_kwargs())
            try:
                if process.wait() != 0:
                    raise DagsterPipesExecutionError(
                        f"External execution process failed with code {process.returncode}")
            except DagsterExecutionInterruptedError:
                context.log.info("[pipes] execution interrupted, stopping the stage process group")
                stop_group(process, self.termination_timeout_seconds)
                raise
            finally:
                if process.poll() is None:  # an unexpected error in this process: leave no stage behind
                    stop_group(process, 0)
        return dg.PipesClientCompletedInvocation(session)


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
    client = _TiedSubprocessClient(env=dict(env or {}), cwd=cwd, message_reader=reader,
                                   termination_timeout_seconds=STOP_GRACE_S)
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

"""The `launcher` resource: where a launched stage's CLI runs. One resource class per deployment.

- `LocalLauncher` (the default, used by tests and the tiny demo) runs the stage CLI
  (`python -m wikigpt_core.run STAGE --spec FILE`) as a subprocess on this machine.
- `SkyPilotLauncher` rents a GPU through SkyPilot (vast.ai by default, from
  `sky/<task>.yaml`) and runs the same CLI there.

Either way the stage talks Dagster Pipes, so logs, metrics, metadata and the DataVersion reach
Dagster the same way. Assets depend only on `StageLauncher`, the interface both implement; the
Launchpad shows the fields of the class the definitions were built with, and only those.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import dagster as dg
from pydantic import Field

from wikigpt_pipeline.launchers.local import run_local

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_ENV = "WIKIGPT_LAUNCHER"
"""Environment variable that picks the launcher class when the definitions load."""

StageContext = dg.AssetExecutionContext | dg.OpExecutionContext


class StageLauncher(dg.ConfigurableResource):
    """What an asset may ask of its launcher. Secrets (HF_TOKEN, WANDB_API_KEY) come from the
    environment only, never from the resource config."""

    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the stage process (local) or the task (SkyPilot).")

    def run_stage(self, context: StageContext, stage: str, cli_args: Sequence[str],
                  outputs: Sequence[Path]) -> dg.MaterializeResult:
        """Run `python -m wikigpt_core.run *cli_args` (`stage` names it in logs and tasks).

        `outputs` are the artifact directories the stage writes (absolute local paths that also
        appear in `cli_args`); a remote launcher copies them back to exactly these paths.
        Returns the stage's Pipes-reported metadata (flattened stats, last metric values,
        launcher figures) and its data_version (the content hash). Raises StageLaunchError with
        the reason (and the log tail when remote) on failure.
        """
        raise NotImplementedError(f"{type(self).__name__} does not run stages")

    def teacher_endpoint(self, context: StageContext,
                         figures: Optional[dict] = None) -> AbstractContextManager[str]:
        """For the duration of the block, an OpenAI-compatible teacher (sky/teacher.yaml: vLLM)
        served on a rented GPU; yields its base URL (`.../v1`) and always tears it down. Its
        GPU-hours (and cost, when the price is known) are put into `figures`."""
        raise NotImplementedError(f"{type(self).__name__} cannot rent a teacher")


class LocalLauncher(StageLauncher):
    """Runs launched stages as subprocesses on this machine."""

    nproc_per_node: int = Field(
        default=1,
        description="Training processes on this machine; > 1 starts the stage under "
                    "`torchrun --nproc_per_node N` (one per GPU; gloo processes on CPU).")

    def run_stage(self, context: StageContext, stage: str, cli_args: Sequence[str],
                  outputs: Sequence[Path]) -> dg.MaterializeResult:
        return run_local(context, stage, cli_args, outputs, env=self.env, nproc=self.nproc_per_node)

    @contextmanager
    def teacher_endpoint(self, context: StageContext, figures: Optional[dict] = None) -> Iterator[str]:
        # A teacher is always rented (`[teacher] launch = "skypilot"`), even when the stages run
        # here: through SkyPilot with its default settings. Configure SkyPilotLauncher to change them.
        with SkyPilotLauncher(env=self.env).teacher_endpoint(context, figures) as url:
            yield url


class SkyPilotLauncher(StageLauncher):
    """Runs launched stages on GPUs rented through SkyPilot (the optional `cloud` extra)."""

    sky_dir: Optional[str] = Field(
        default=None, description="Folder with the task YAMLs; default: <repo>/sky.")
    workdir: Optional[str] = Field(
        default=None, description="Repository uploaded as the task workdir; default: this repo.")
    infra: Optional[str] = Field(
        default=None, description="Override the YAML's infra (e.g. `vast`, `runpod`).")
    accelerators: Optional[str] = Field(
        default=None, description="Override the YAML's accelerators (e.g. `RTX4090:1`); the "
                                  "training process count follows the GPU count (`RTX4090:4`).")
    num_nodes: Optional[int] = Field(
        default=None,
        description="Override the YAML's num_nodes: > 1 spans several machines (torchrun with "
                    "SkyPilot's node rank and IPs); refused on vast.ai, which rents single machines.")
    use_spot: bool = Field(
        default=False,
        description="Interruptible instances through SkyPilot managed jobs (needs hub_repo: "
                    "outputs and resume checkpoints travel through the HF Hub).")
    hub_repo: Optional[str] = Field(
        default=None,
        description="HF Hub repo (`user/name`) for outputs and resumable checkpoints; when "
                    "unset, outputs come back by rsync over the cluster's SSH alias.")
    keep_cluster: bool = Field(
        default=False, description="Skip `sky.down` after the stage (debugging only: it bills).")
    ssh: str = Field(
        default="ssh",
        description="Command that reaches a cluster by name: rsync's remote shell for outputs "
                    "(`rsync -e`) and the teacher's SSH port-forward (`ssh -N -L`). Plain `ssh` "
                    "works because SkyPilot writes each cluster's name as an alias into ~/.ssh/config.")
    hourly_price_usd: Optional[float] = Field(
        default=None,
        description="Price used for the cost metadata when SkyPilot cannot say (e.g. 0.40).")

    def run_stage(self, context: StageContext, stage: str, cli_args: Sequence[str],
                  outputs: Sequence[Path]) -> dg.MaterializeResult:
        from wikigpt_pipeline.launchers.skypilot import SkyPilotRunner  # imports `sky`: optional extra

        return SkyPilotRunner.from_resource(self).run_stage(context, stage, cli_args, outputs)

    @contextmanager
    def teacher_endpoint(self, context: StageContext, figures: Optional[dict] = None) -> Iterator[str]:
        """The API key comes from WIKIGPT_TEACHER_API_KEY (or VLLM_API_KEY) and travels as a
        SkyPilot secret; the requests travel through an SSH port-forward, never in clear text
        over the internet."""
        from wikigpt_pipeline.launchers.skypilot import TEACHER_KEY_ENVS, SkyPilotRunner  # optional extra

        key = next((os.environ[k] for k in TEACHER_KEY_ENVS if os.environ.get(k)), "")
        with SkyPilotRunner.from_resource(self).teacher_endpoint(context, key, figures=figures) as url:
            yield url

    def sky_dir_path(self) -> Path:
        return Path(self.sky_dir) if self.sky_dir else REPO_ROOT / "sky"

    def workdir_path(self) -> Path:
        return Path(self.workdir) if self.workdir else REPO_ROOT


LAUNCHERS: dict[str, type[StageLauncher]] = {"local": LocalLauncher, "skypilot": SkyPilotLauncher}
"""The launcher classes by the name `WIKIGPT_LAUNCHER` gives them."""


def launcher_from_env(environ: Optional[dict[str, str]] = None) -> StageLauncher:
    """The launcher `WIKIGPT_LAUNCHER` names (`local` when unset), with its default config; the
    Launchpad edits its fields per run."""
    name = (os.environ if environ is None else environ).get(LAUNCHER_ENV, "local")
    if name not in LAUNCHERS:
        raise ValueError(f"{LAUNCHER_ENV}={name!r} names no launcher; set it to one of "
                         f"{', '.join(LAUNCHERS)}")
    return LAUNCHERS[name]()

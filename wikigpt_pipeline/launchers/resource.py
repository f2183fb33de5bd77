"""`ComputeLauncher`: the Dagster resource that decides where a GPU stage's CLI runs.

`backend="local"` (the default, used by tests and the tiny demo) runs the CLI as a subprocess
here. `backend="skypilot"` rents a GPU through SkyPilot (vast.ai by default, from
`sky/<stage>.yaml`) and runs the same CLI there. Either way the stage talks Dagster Pipes, so
logs, metrics, metadata and the DataVersion reach Dagster the same way.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import dagster as dg
from pydantic import Field

from wikigpt_pipeline.launchers.local import run_local

BACKENDS = ("local", "skypilot")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ComputeLauncher(dg.ConfigurableResource):
    """Where GPU stages run. Secrets (HF_TOKEN, WANDB_API_KEY) come from the environment only."""

    backend: str = Field(default="local", description="`local` or `skypilot`.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the stage process (local) or the task (skypilot).")
    nproc_per_node: int = Field(
        default=1,
        description="local only: training processes on this machine; > 1 starts the stage under "
                    "`torchrun --nproc_per_node N` (one per GPU; gloo processes on CPU). On "
                    "SkyPilot the count comes from the task's accelerators (`RTX4090:4`).")
    # --- skypilot only ---
    sky_dir: Optional[str] = Field(
        default=None, description="Folder with the task YAMLs; default: <repo>/sky.")
    workdir: Optional[str] = Field(
        default=None, description="Repository uploaded as the task workdir; default: this repo.")
    infra: Optional[str] = Field(
        default=None, description="Override the YAML's infra (e.g. `vast`, `runpod`).")
    accelerators: Optional[str] = Field(
        default=None, description="Override the YAML's accelerators (e.g. `RTX4090:1`).")
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

    def run_stage(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        stage: str,
        cli_args: Sequence[str],
        outputs: Sequence[Path],
    ) -> dg.MaterializeResult:
        """Run `python -m wikigpt_core.<stage> *cli_args` on the configured backend.

        `outputs` are the artifact directories the stage writes (absolute local paths that also
        appear in `cli_args`); the skypilot backend writes them remotely and copies them back
        to exactly these paths. Returns the stage's Pipes-reported metadata (flattened stats,
        last metric values, backend figures) and its data_version (the content hash).
        Raises StageLaunchError with the reason (and the log tail when remote) on failure.
        """
        if self.backend == "local":
            return run_local(context, stage, cli_args, outputs, env=self.env, nproc=self.nproc_per_node)
        if self.backend == "skypilot":
            from wikigpt_pipeline.launchers.skypilot import SkyPilotLauncher  # optional extra

            return SkyPilotLauncher.from_resource(self).run_stage(context, stage, cli_args, outputs)
        raise ValueError(f"ComputeLauncher.backend={self.backend!r}; choose one of {BACKENDS}")

    @contextmanager
    def teacher_endpoint(self, context, figures: Optional[dict] = None) -> Iterator[str]:
        """For the duration of the block, an OpenAI-compatible teacher (sky/teacher.yaml: vLLM)
        served on a rented GPU; yields its base URL (`.../v1`) and always tears it down. Its
        GPU-hours (and cost, when the price is known) are put into `figures`. The API key comes
        from WIKIGPT_TEACHER_API_KEY (or VLLM_API_KEY) and travels as a SkyPilot secret; the
        requests travel through an SSH port-forward, never in clear text over the internet."""
        from wikigpt_pipeline.launchers.skypilot import TEACHER_KEY_ENVS, SkyPilotLauncher  # optional extra

        key = next((os.environ[k] for k in TEACHER_KEY_ENVS if os.environ.get(k)), "")
        with SkyPilotLauncher.from_resource(self).teacher_endpoint(context, key, figures=figures) as url:
            yield url

    def sky_dir_path(self) -> Path:
        return Path(self.sky_dir) if self.sky_dir else REPO_ROOT / "sky"

    def workdir_path(self) -> Path:
        return Path(self.workdir) if self.workdir else REPO_ROOT

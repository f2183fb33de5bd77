"""How a stage process is started: plain `python`, or `torchrun` for several training processes.

`stage_command(["-m", "wikigpt_core.run", STAGE, "--spec", FILE], nproc)` is what the local
launcher runs. With nproc > 1 it is `python -m torch.distributed.run --standalone
--nproc_per_node N -m ...`: one process per GPU (NCCL), or N gloo processes on CPU. Every rank
runs the stage; only rank 0 speaks Dagster Pipes and writes the artifact (see
`wikigpt_core.pipes_bridge` and `wikigpt_core.train.stage`). `--standalone` rendezvouses on a
free local port, so concurrent runs on one machine do not collide.

`sky/run_stage.sh` builds the same command on a rented box, where N comes from
`$SKYPILOT_NUM_GPUS_PER_NODE` and several nodes use SkyPilot's node rank and IPs.
"""
from __future__ import annotations

import sys
from typing import Sequence

TORCHRUN_MODULE = "torch.distributed.run"
"""`torchrun` as a module of the running interpreter (the console script may be another venv's)."""


def stage_command(module_args: Sequence[str], nproc: int = 1, *, python: str = sys.executable) -> list[str]:
    """argv starting the stage whose `python` arguments are `module_args` (e.g. `-m pkg ...`),
    in one process, or under torchrun in `nproc` processes on this machine."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc_per_node must be a whole number >= 1, got {nproc!r}")
    args = [str(a) for a in module_args]
    if nproc == 1:
        return [python, *args]
    return [python, "-m", TORCHRUN_MODULE, "--standalone", f"--nproc_per_node={nproc}", *args]

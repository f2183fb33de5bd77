"""Where GPU stages run: a local subprocess or a rented GPU through SkyPilot, both over Pipes.

SkyPilot is the optional `cloud` extra: nothing here imports `sky` until the skypilot backend
is actually used.
"""
from wikigpt_pipeline.launchers.local import run_local, stage_argv
from wikigpt_pipeline.launchers.resource import BACKENDS, ComputeLauncher
from wikigpt_pipeline.launchers.results import StageLaunchError

__all__ = ["BACKENDS", "ComputeLauncher", "StageLaunchError", "run_local", "stage_argv"]

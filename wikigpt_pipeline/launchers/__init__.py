"""Where launched stages run: a local subprocess or a rented GPU through SkyPilot, both over Pipes.

SkyPilot is the optional `cloud` extra: nothing here imports `sky` until a SkyPilotLauncher
actually runs a stage or rents a teacher.
"""
from wikigpt_pipeline.launchers.local import run_local, stage_argv
from wikigpt_pipeline.launchers.resource import (
    LAUNCHER_ENV,
    LAUNCHERS,
    LocalLauncher,
    SkyPilotLauncher,
    StageLauncher,
    launcher_from_env,
)
from wikigpt_pipeline.launchers.results import StageLaunchError

__all__ = ["LAUNCHERS", "LAUNCHER_ENV", "LocalLauncher", "SkyPilotLauncher", "StageLaunchError",
           "StageLauncher", "launcher_from_env", "run_local", "stage_argv"]

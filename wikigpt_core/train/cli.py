"""Shared command-line plumbing for `python -m wikigpt_core.{pretrain,sft,dpo}`.

Settings come from the profile (--profile, default $WIKIGPT_PROFILE or tiny) plus the TOML
overrides file (--config, default $WIKIGPT_CONFIG), exactly as the pipeline builds them.
`--out`/`--work` default to the pipeline's artifact and work dirs under $WIKIGPT_HOME.
Progress and the result go through `wikigpt_core.pipes_bridge.stage_reporter`: Dagster Pipes
when launched by it (e.g. a remote GPU job), printed otherwise (last line: the result JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from wikigpt_core.config import Settings, artifact_dir, load_settings, work_dir

ASSETS = {"pretrain": "base_checkpoint", "sft": "sft_checkpoint", "dpo": "dpo_checkpoint"}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="tiny, 124m or 350m (default $WIKIGPT_PROFILE or tiny)")
    p.add_argument("--config", type=Path, default=None, help="TOML overrides (default $WIKIGPT_CONFIG)")
    p.add_argument("--out", type=Path, default=None, help="artifact dir to publish (default under $WIKIGPT_HOME)")
    p.add_argument("--work", type=Path, default=None, help="resumable scratch dir (default under $WIKIGPT_HOME)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--max-steps", type=int, default=None, help="override the stage's max_steps")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=None, help="override torch.compile")


def settings_from_args(args: argparse.Namespace, stage: str) -> Settings:
    settings = load_settings(args.profile, args.config)
    section = {"pretrain": "pretrain", "sft": "sft", "dpo": "dpo"}[stage]
    cfg = settings.section(section)
    changes = {}
    if args.max_steps is not None:
        changes.update(max_steps=args.max_steps, epochs=None)
    if args.compile is not None:
        changes["compile"] = args.compile
    if changes:
        settings = dataclasses.replace(settings, **{section: dataclasses.replace(cfg, **changes)})
    args.out = args.out or artifact_dir(settings, ASSETS[stage])
    args.work = args.work or work_dir(settings, ASSETS[stage])
    return settings


def run_stage_cli(stage: str, call) -> None:
    """Run `call(on_metrics)` under the stage reporter: Dagster Pipes when launched by it
    (live metrics, materialization with the content hash as data version), else printed.
    Only rank 0 reports under torchrun; the other ranks just train."""
    from wikigpt_core.pipes_bridge import stage_reporter

    if int(os.environ.get("RANK", "0")) != 0:
        call(None)
        return
    with stage_reporter(stage) as rep:
        rep.report(call(rep.metrics))

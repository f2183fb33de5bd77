"""Shared command-line plumbing for the data stage CLIs (`python -m wikigpt_core.data.<stage>`).

Every CLI takes the profile and overrides the same way as the pipeline (`--profile`,
`--config`, else $WIKIGPT_PROFILE / $WIKIGPT_CONFIG / $WIKIGPT_DUMP) and defaults its input and
output directories to the artifact locations under $WIKIGPT_HOME, so the same command works
on a laptop and on a box without Dagster.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_common(p: argparse.ArgumentParser, inputs: dict[str, str], work: bool) -> None:
    p.add_argument("--profile", help="tiny, 124m or 350m (default: $WIKIGPT_PROFILE or tiny)")
    p.add_argument("--config", help="TOML overrides file (default: $WIKIGPT_CONFIG)")
    for flag, asset in inputs.items():
        p.add_argument(f"--{flag}", type=Path, help=f"input directory (default: the `{asset}` artifact)")
    p.add_argument("--out", type=Path, help="artifact directory to publish (default: under $WIKIGPT_HOME)")
    if work:
        p.add_argument("--work", type=Path, help="resumable scratch directory (default: $WIKIGPT_HOME/<profile>/_work/<asset>)")


def resolve(args: argparse.Namespace, asset: str, inputs: dict[str, str]) -> tuple[Any, dict[str, Path]]:
    """Settings plus the directories the stage reads and writes."""
    from wikigpt_core.config import artifact_dir, load_settings, work_dir

    settings = load_settings(args.profile, args.config)
    dirs: dict[str, Path] = {}
    for attr, upstream in inputs.items():
        dirs[attr] = getattr(args, attr) or artifact_dir(settings, upstream)
    dirs["out"] = args.out or artifact_dir(settings, asset)
    if hasattr(args, "work"):
        dirs["work"] = args.work or work_dir(settings, asset)
    return settings, dirs


def print_result(result: Any) -> None:
    print(json.dumps({"path": str(result.path), "content_hash": result.content_hash,
                      "stats": result.stats}, indent=2, default=str))

"""`python -m wikigpt_core.release`: build (and, with HF_REPO_ID + HF_TOKEN, publish) the
release from the artifacts under $WIKIGPT_HOME/<profile>/, exactly as the `hf_release` asset.

Lineage (the figures on the model card) is read from the upstream artifacts' manifests.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from wikigpt_core.artifacts import read_manifest
from wikigpt_core.config import artifact_dir, load_settings
from wikigpt_core.pipes_bridge import stage_reporter
from wikigpt_core.release.stage import run_release

UPSTREAM = ("wiki_dump", "cleaned_articles", "deduped_corpus", "tokenizer", "token_shards",
            "base_checkpoint", "sft_dataset", "sft_checkpoint", "preference_dataset",
            "dpo_checkpoint", "eval_report")


def lineage_from_manifests(dirs: dict[str, Path]) -> dict[str, dict]:
    """{asset: {"stats", "content_hash"}} from each finished artifact's manifest.json; an asset
    not materialized yet is left out (its figures show as n/a on the card)."""
    lineage = {}
    for name, directory in dirs.items():
        try:
            m = read_manifest(directory)
        except FileNotFoundError:
            continue
        lineage[name] = {"stats": m.get("stats", {}), "content_hash": m.get("content_hash", "")}
    return lineage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wikigpt_core.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, help="tiny, 124m or 350m (default $WIKIGPT_PROFILE or tiny)")
    p.add_argument("--config", type=Path, default=None, help="TOML overrides (default $WIKIGPT_CONFIG)")
    p.add_argument("--out", type=Path, default=None, help="release dir (default $WIKIGPT_HOME/<profile>/hf_release)")
    p.add_argument("--dpo", type=Path, default=None, help="checkpoint to release (default: dpo_checkpoint)")
    p.add_argument("--repo-name", default=None, help="override release.repo_name")
    args = p.parse_args(argv)
    settings = load_settings(args.profile, args.config)
    cfg = settings.release
    if args.repo_name:
        cfg = dataclasses.replace(cfg, repo_name=args.repo_name)
    dirs = {name: artifact_dir(settings, name) for name in UPSTREAM}
    with stage_reporter("hf_release") as rep:
        result = run_release(cfg, args.dpo or dirs["dpo_checkpoint"], dirs["tokenizer"],
                             dirs["eval_report"], args.out or artifact_dir(settings, "hf_release"),
                             lineage_from_manifests(dirs))
        rep.report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

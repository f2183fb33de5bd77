"""eval_report: perplexity, pairwise judge, judge-free harness and gallery for all checkpoints."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline.factory import StageIO, stage_asset

CHECKPOINTS = ("base_checkpoint", "sft_checkpoint", "dpo_checkpoint")
DEPS = (*CHECKPOINTS, "token_shards", "sft_dataset")


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="eval_report", deps=DEPS, sections=("eval", "teacher"),
                 version="1", group="evaluation", kinds={"markdown", "json"}, pool="gpu",
                 retry_policy=dg.RetryPolicy(max_retries=2, delay=15))
    def eval_report(context: dg.AssetExecutionContext, io: StageIO):
        """report.md + report.json: val perplexity, debiased pairwise wins, the SPEC §4
        harness and the 20-prompt gallery, for base, SFT and DPO."""
        from wikigpt_core.evaluate import run_eval

        checkpoints = {name.split("_")[0]: io.input(name) for name in CHECKPOINTS}
        upstream = {name: io.manifest(name)["stats"] for name in DEPS}
        return run_eval(settings.eval, settings.teacher, checkpoints, io.input("token_shards"),
                        io.input("sft_dataset"), checkpoints["sft"], io.out, upstream=upstream,
                        cache_dir=io.work / "teacher_cache")

    return [eval_report]

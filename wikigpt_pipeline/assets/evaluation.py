"""eval_report: perplexity, pairwise judge, judge-free harness and gallery for all checkpoints.
Its model passes run through the `launcher` resource, like training."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.artifacts import atomic_write_json
from wikigpt_core.config import Settings
from wikigpt_pipeline import previews
from wikigpt_pipeline.factory import StageIO, stage_asset

CHECKPOINTS = ("base_checkpoint", "sft_checkpoint", "dpo_checkpoint")
DEPS = (*CHECKPOINTS, "token_shards", "sft_dataset")


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="eval_report", deps=DEPS, sections=("eval", "teacher"),
                 version="1", group="evaluation", kinds={"markdown", "json"}, pool="gpu",
                 resources={"launcher"}, retry_policy=dg.RetryPolicy(max_retries=2, delay=15),
                 preview=previews.eval_report)
    def eval_report(context: dg.AssetExecutionContext, io: StageIO):
        """report.md + report.json: val perplexity, debiased pairwise wins, the SPEC §4
        harness and the 20-prompt gallery, for base, SFT and DPO."""
        # Upstream figures (time, GPU hours, cost) for the report's cost table.
        upstream = io.work / "upstream.json"
        atomic_write_json(upstream, {name: io.manifest(name)["stats"] for name in DEPS})
        sft = io.input("sft_checkpoint")
        return io.launch(context, "evaluate", {
            "--base": io.input("base_checkpoint"), "--sft": sft, "--dpo": io.input("dpo_checkpoint"),
            "--shards": io.input("token_shards"), "--sft-dataset": io.input("sft_dataset"),
            "--tokenizer": sft, "--cache": io.work / "teacher_cache", "--upstream": upstream},
            resumable=False)

    return [eval_report]

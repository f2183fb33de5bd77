"""Alignment data: sft_dataset (teacher over passages) and preference_dataset (judge-ranked)."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline import previews
from wikigpt_pipeline.factory import StageIO, stage_asset

GROUP = "alignment"
TEACHER_RETRY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL)


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="sft_dataset", deps=("deduped_corpus",),
                 sections=("sft_data", "teacher"), version="1", group=GROUP, kinds={"jsonl"},
                 retry_policy=TEACHER_RETRY, preview=previews.chat_examples)
    def sft_dataset(context: dg.AssetExecutionContext, io: StageIO):
        """Chat examples (grounded QA, summarization, extraction) written by the teacher over
        corpus passages; train + held-out JSONL with a data card."""
        from wikigpt_core.align.sft_data import run_sft_data

        return run_sft_data(settings.sft_data, settings.teacher, io.input("deduped_corpus"),
                            io.out, io.work / "teacher_cache")

    @stage_asset(settings, name="preference_dataset", deps=("sft_checkpoint", "sft_dataset"),
                 sections=("preference", "teacher"), version="1", group=GROUP,
                 kinds={"jsonl"}, retry_policy=TEACHER_RETRY, pool="gpu",
                 preview=previews.preference_pairs)
    def preference_dataset(context: dg.AssetExecutionContext, io: StageIO):
        """(prompt, chosen, rejected) pairs: SFT samples ranked by the judge, plus
        false-premise contrasts where chosen refuses and rejected invents."""
        from wikigpt_core.align.preferences import run_preferences

        sft = io.input("sft_checkpoint")
        return run_preferences(settings.preference, settings.teacher, sft, io.input("sft_dataset"),
                               sft, io.out, io.work / "teacher_cache")

    return [sft_dataset, preference_dataset]

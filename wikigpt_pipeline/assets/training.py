"""Training assets: base_checkpoint → sft_checkpoint → dpo_checkpoint (GPU pool)."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline.factory import StageIO, stage_asset

GROUP = "training"
GPU_POOL = "gpu"  # one GPU stage at a time; see dagster.yaml


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="base_checkpoint", deps=("token_shards", "tokenizer"),
                 sections=("model", "pretrain"), version="1", group=GROUP,
                 kinds={"pytorch", "safetensors"}, pool=GPU_POOL)
    def base_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The pretrained base model (SPEC §2 shape of the profile), safetensors + config."""
        from wikigpt_core.pretrain import run_pretrain

        return run_pretrain(settings.model, settings.pretrain, io.input("token_shards"), io.out,
                            io.work, tokenizer_dir=io.input("tokenizer"),
                            on_metrics=io.metrics_logger(context))

    @stage_asset(settings, name="sft_checkpoint", deps=("base_checkpoint", "sft_dataset"),
                 sections=("sft",), version="1", group=GROUP, kinds={"pytorch", "safetensors"},
                 pool=GPU_POOL)
    def sft_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The base model fine-tuned on the chat data (SPEC §3 masking and packing)."""
        from wikigpt_core.sft import run_sft

        base = io.input("base_checkpoint")
        return run_sft(settings.sft, base, io.input("sft_dataset"), base, io.out, io.work,
                       on_metrics=io.metrics_logger(context))

    @stage_asset(settings, name="dpo_checkpoint", deps=("sft_checkpoint", "preference_dataset"),
                 sections=("dpo",), version="1", group=GROUP, kinds={"pytorch", "safetensors"},
                 pool=GPU_POOL)
    def dpo_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The SFT model aligned with DPO against a frozen copy of itself."""
        from wikigpt_core.dpo import run_dpo

        sft = io.input("sft_checkpoint")
        return run_dpo(settings.dpo, sft, io.input("preference_dataset"), sft, io.out, io.work,
                       on_metrics=io.metrics_logger(context))

    return [base_checkpoint, sft_checkpoint, dpo_checkpoint]

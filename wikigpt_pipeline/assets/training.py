"""Training assets: base_checkpoint → sft_checkpoint → dpo_checkpoint.

They run through the `launcher` resource (a local subprocess by default, a rented GPU with
`WIKIGPT_LAUNCHER=skypilot`) in the `gpu` pool, one at a time.
"""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline import previews
from wikigpt_pipeline.factory import StageIO, stage_asset

GROUP = "training"
GPU_POOL = "gpu"  # one GPU stage at a time; see dagster.yaml
GPU = dict(group=GROUP, kinds={"pytorch", "safetensors"}, pool=GPU_POOL, resources={"launcher"},
           preview=previews.training_samples)


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="base_checkpoint", deps=("token_shards", "tokenizer"),
                 sections=("model", "pretrain"), version="1", **GPU)
    def base_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The pretrained base model (SPEC §2 shape of the profile), safetensors + config."""
        return io.launch(context, "pretrain", {"--shards": io.input("token_shards"),
                                               "--tokenizer": io.input("tokenizer")})

    @stage_asset(settings, name="sft_checkpoint", deps=("base_checkpoint", "sft_dataset"),
                 sections=("sft",), version="1", **GPU)
    def sft_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The base model fine-tuned on the chat data (SPEC §3 masking and packing)."""
        base = io.input("base_checkpoint")  # carries the tokenizer it was trained with
        return io.launch(context, "sft", {"--base": base, "--data": io.input("sft_dataset"),
                                          "--tokenizer": base})

    @stage_asset(settings, name="dpo_checkpoint", deps=("sft_checkpoint", "preference_dataset"),
                 sections=("dpo",), version="1", **GPU)
    def dpo_checkpoint(context: dg.AssetExecutionContext, io: StageIO):
        """The SFT model aligned with DPO against a frozen copy of itself."""
        sft = io.input("sft_checkpoint")
        return io.launch(context, "dpo", {"--sft": sft, "--pairs": io.input("preference_dataset"),
                                          "--tokenizer": sft})

    return [base_checkpoint, sft_checkpoint, dpo_checkpoint]

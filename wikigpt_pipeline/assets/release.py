"""hf_release: a folder stock `transformers` loads as LlamaForCausalLM, with a model card
generated from the lineage's recorded figures; pushed to the Hub when HF_REPO_ID/HF_TOKEN are set."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline import previews
from wikigpt_pipeline.factory import StageIO, stage_asset

# Every upstream asset whose figures the model card and run manifest quote.
LINEAGE = ("wiki_dump", "cleaned_articles", "deduped_corpus", "tokenizer", "token_shards",
           "base_checkpoint", "sft_dataset", "sft_checkpoint", "preference_dataset",
           "dpo_checkpoint", "eval_report")


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    @stage_asset(settings, name="hf_release", deps=("dpo_checkpoint", "tokenizer", "eval_report"),
                 sections=("release",), version="1", group="release", kinds={"huggingface"},
                 retry_policy=dg.RetryPolicy(max_retries=2, delay=30), preview=previews.model_card)
    def hf_release(context: dg.AssetExecutionContext, io: StageIO):
        """The release folder: Llama config + safetensors, tokenizer with chat template,
        generation config, model card, gallery, run manifest, license."""
        from wikigpt_core.release import run_release

        lineage = {name: {"stats": m["stats"], "content_hash": m["content_hash"]}
                   for name in LINEAGE for m in [io.manifest(name)]}
        return run_release(settings.release, io.input("dpo_checkpoint"), io.input("tokenizer"),
                           io.input("eval_report"), io.out, lineage)

    return [hf_release]

"""Data assets: wiki_dump → cleaned_articles → deduped_corpus → tokenizer → token_shards."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dedup import run_dedup
from wikigpt_core.data.dump import observe_dump, run_dump
from wikigpt_core.data.shards import run_shards
from wikigpt_core.data.tokenizer_train import run_tokenizer
from wikigpt_pipeline import previews
from wikigpt_pipeline.automation import data_eager
from wikigpt_pipeline.factory import StageIO, stage_asset

GROUP = "data"
NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def build(settings: Settings) -> list[dg.AssetsDefinition]:
    # The dump is observed at its configured source: a changed file or a new dump date
    # changes this fingerprint, hence wiki_dump's code_version, so the UI shows it stale.
    @stage_asset(settings, name="wiki_dump", deps=(), sections=("dump",), version="1",
                 group=GROUP, kinds={"bz2"}, retry_policy=NETWORK_RETRY,
                 fingerprint=observe_dump(settings.dump))
    def wiki_dump(context: dg.AssetExecutionContext, io: StageIO):
        """The Wikipedia dump (pages-articles bz2, plus the index for multistream dumps),
        fetched or copied from WIKIGPT_DUMP and verified by SHA-1."""
        return run_dump(settings.dump, io.out, io.work)

    @stage_asset(settings, name="cleaned_articles", deps=("wiki_dump",), sections=("clean",),
                 version="1", group=GROUP, kinds={"parquet"}, automation_condition=data_eager(),
                 preview=previews.articles("articles.parquet"))
    def cleaned_articles(context: dg.AssetExecutionContext, io: StageIO):
        """Article plain text (namespace 0, no redirects or disambiguation pages), filtered;
        parquet with id, title, url, text."""
        return run_clean(settings.clean, io.input("wiki_dump"), io.out, io.work)

    @stage_asset(settings, name="deduped_corpus", deps=("cleaned_articles",), sections=("dedup",),
                 version="1", group=GROUP, kinds={"parquet"}, automation_condition=data_eager(),
                 preview=previews.articles("corpus.parquet"))
    def deduped_corpus(context: dg.AssetExecutionContext, io: StageIO):
        """Cleaned articles minus exact (SHA-1 of normalized text) and near duplicates
        (MinHash-LSH)."""
        return run_dedup(settings.dedup, io.input("cleaned_articles"), io.out)

    @stage_asset(settings, name="tokenizer", deps=("deduped_corpus",), sections=("tokenizer",),
                 version="1", group=GROUP, kinds={"tokenizers"}, automation_condition=data_eager())
    def tokenizer(context: dg.AssetExecutionContext, io: StageIO):
        """Byte-level BPE (tokenizer.json) with reserved single-id specials."""
        return run_tokenizer(settings.tokenizer, io.input("deduped_corpus"), io.out)

    @stage_asset(settings, name="token_shards", deps=("deduped_corpus", "tokenizer"),
                 sections=("shards",), version="1", group=GROUP, kinds={"numpy"},
                 automation_condition=data_eager())
    def token_shards(context: dg.AssetExecutionContext, io: StageIO):
        """uint16 train.bin / val.bin, documents joined by <|endoftext|>."""
        return run_shards(settings.shards, io.input("deduped_corpus"), io.input("tokenizer"),
                          io.out, io.work)

    return [wiki_dump, cleaned_articles, deduped_corpus, tokenizer, token_shards]

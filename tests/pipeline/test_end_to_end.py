"""The whole graph on the tiny profile and the real enwiki sample, through Dagster, with real
properties asserted on every artifact."""
from __future__ import annotations

import bz2
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import dagster as dg
import torch

from wikigpt_core.artifacts import content_hash, read_manifest
from wikigpt_core.config import load_settings
from wikigpt_core.stages import asset_names
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer

pytestmark = pytest.mark.slow

ASSETS = asset_names(load_settings("tiny", env=False))  # the default graph, dump to release


def _metadata(materialized, asset):
    for event in materialized.events(dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() == asset:
            return mat
    raise AssertionError(f"{asset} was not materialized")


def test_wikigpt_run_prints_every_asset_and_succeeds(materialized):
    out = materialized.stdout
    assert "succeeded in" in out and f"run {materialized.run_id}" in out
    for asset in ASSETS:
        assert str(materialized.artifact(asset)) in out  # each asset's version dir is printed


def test_wikigpt_status_shows_everything_fresh(materialized):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "wikigpt_pipeline.cli", "status"], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert sorted(r[0] for r in rows) == sorted(ASSETS)  # Dagster's topological order
    assert all(r[1] == "FRESH" for r in rows), done.stdout


def test_all_twelve_assets_materialized_with_path_and_data_version(materialized):
    assert len(ASSETS) == 12
    for asset in ASSETS:
        mat = _metadata(materialized, asset)
        path = mat.metadata["path"].value
        assert path == str(materialized.artifact(asset))  # its version dir, where `current` points
        assert mat.metadata["cache_hit"].value is False
        # DataVersion is the content hash of the artifact on disk.
        assert mat.tags["dagster/data_version"] == content_hash(materialized.artifact(asset))
        assert read_manifest(materialized.artifact(asset))["content_hash"] == content_hash(materialized.artifact(asset))


def test_articles_are_real_and_bounded_by_input_pages(materialized):
    with bz2.open(materialized.artifact("wiki_dump").glob("*.bz2").__next__(), "rt") as f:
        pages = len(re.findall(r"<page>", f.read()))
    for asset, name in (("cleaned_articles", "articles.parquet"), ("deduped_corpus", "corpus.parquet")):
        table = pq.read_table(materialized.artifact(asset) / name)
        assert 0 < table.num_rows <= pages
        assert table.column_names[:4] == ["id", "title", "url", "text"]
    titles = set(pq.read_table(materialized.artifact("deduped_corpus") / "corpus.parquet")["title"].to_pylist())
    assert "Anarchism" in titles  # the first article of the real enwiki sample


def test_tokenizer_round_trips_and_specials_are_single_ids(materialized):
    tok = WikiTokenizer.load(materialized.artifact("tokenizer"))
    text = "Anarchism is a political philosophy — naïve café 1066."
    assert tok.decode(tok.encode(text)) == text
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.backend.token_to_id(special) == i
    assert tok.vocab_size == materialized.settings.model.vocab_size


def test_shards_ids_below_vocab(materialized):
    vocab = materialized.settings.model.vocab_size
    for split in ("train", "val"):
        arr = np.memmap(materialized.artifact("token_shards") / f"{split}.bin", dtype=np.uint16, mode="r")
        assert arr.size > 0 and int(arr.max()) < vocab


def test_training_lowers_the_loss(materialized):
    stats = read_manifest(materialized.artifact("base_checkpoint"))["stats"]
    assert stats["train_loss"] < stats["initial_loss"]
    assert abs(stats["initial_loss"] - math.log(materialized.settings.model.vocab_size)) < 0.5


def test_report_has_a_perplexity_per_checkpoint(materialized):
    report = json.loads((materialized.artifact("eval_report") / "report.json").read_text())
    for ckpt in ("base", "sft", "dpo"):
        assert math.isfinite(report["perplexity"][ckpt]) and report["perplexity"][ckpt] > 1
    assert (materialized.artifact("eval_report") / "report.md").read_text().strip()


def test_release_weights_load_back_with_identical_logits(materialized):
    from wikigpt_core.model_io import load_model
    from wikigpt_core.release.hf_export import load_release_model

    dpo = load_model(materialized.artifact("dpo_checkpoint"))
    released = load_release_model(materialized.artifact("hf_release"))
    idx = torch.randint(0, dpo.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, _ = dpo(idx, idx)
        b, _ = released(idx, idx)
    assert torch.equal(a, b)


def test_asset_checks_all_ran(materialized):
    evaluations = [e.event_specific_data for e in
                   materialized.events(dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    names = {e.check_name for e in evaluations}
    assert {"dedup_fraction_in_band", "specials_and_round_trip", "ids_below_vocab",
            "untrained_loss_near_ln_vocab", "loss_fraction_in_band", "release_loads"} <= names
    blocking_failed = [e.check_name for e in evaluations if not e.passed and e.check_name in
                       ("dedup_fraction_in_band", "specials_and_round_trip", "ids_below_vocab",
                        "untrained_loss_near_ln_vocab", "loss_fraction_in_band", "release_loads")]
    assert not blocking_failed

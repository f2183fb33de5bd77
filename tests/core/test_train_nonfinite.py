"""No NaN is published: a non-finite loss or gradient norm stops the stage with
`NonFiniteTrainingError` before anything of it is saved; the last good checkpoint stays in the
work dir and no artifact appears at `out`."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.core.train_support import (make_sft_dataset, make_shards, make_tokenizer, micro_model,  # noqa: F401
                                      micro_train, single_thread)
from wikigpt_core.model import GPT
from wikigpt_core.model_io import save_model
from wikigpt_core.pretrain import run_pretrain
from wikigpt_core.sft import run_sft
from wikigpt_core.train.objectives import LMObjective
from wikigpt_core.train.trainer import NonFiniteTrainingError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    make_tokenizer(directory)
    return directory


def checkpoint_steps(work) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in work.glob("*/ckpt-*"))


def test_sft_from_a_base_with_nan_weights_fails_and_publishes_nothing(tmp_path, tok_dir):
    from wikigpt_core.tokenizer import WikiTokenizer

    vocab = WikiTokenizer.load(tok_dir).vocab_size
    torch.manual_seed(0)
    base = GPT(micro_model(vocab))
    with torch.no_grad():
        base.blocks[0].mlp.up.weight[0, 0] = float("nan")  # one corrupted value is enough
    save_model(base, tmp_path / "base")
    data = make_sft_dataset(tmp_path / "sft_data", n=24)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(NonFiniteTrainingError, match=r"loss/train = nan, grad_norm = nan at step 1 of 4.*Lower lr"):
        run_sft(micro_train(max_steps=4, ckpt_interval=1), tmp_path / "base", data, tok_dir, out, work)
    assert not out.exists()
    assert checkpoint_steps(work) == []  # the first step was already bad: nothing saved


class PoisonedFrom(LMObjective):
    """The LM loss, made NaN from optimizer step `first_bad` on (one micro-batch per step)."""

    first_bad = 5

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, model, batch):
        loss, mets = super().__call__(model, batch)
        self.calls += 1
        return (loss * math.nan if self.calls >= self.first_bad else loss), mets


def test_divergence_between_log_steps_is_caught_before_the_checkpoint(tmp_path, tok_dir, monkeypatch):
    from wikigpt_core import pretrain
    from wikigpt_core.tokenizer import WikiTokenizer

    tok = WikiTokenizer.load(tok_dir)
    shards = make_shards(tmp_path / "shards", tok)
    monkeypatch.setattr(pretrain, "LMObjective", PoisonedFrom)
    # Logs at steps 1, 4, 8; checkpoints at 3 and 6. Step 5 goes bad; step 6 is a checkpoint
    # step but not a log step: the check before saving must catch it.
    cfg = micro_train(max_steps=8, grad_accum=1, log_interval=4, ckpt_interval=3, eval_interval=100,
                      sample_interval=100, ckpt_minutes=0)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(NonFiniteTrainingError, match=r"at steps 5-6 of 8.*ckpt-00000003 is kept"):
        run_pretrain(micro_model(tok.vocab_size), cfg, shards, out, work)
    assert not out.exists()
    assert checkpoint_steps(work) == [3]  # the good one stays, the bad step 6 was never written
    kept = load_file(str(next(work.glob("*/ckpt-00000003")) / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in kept.values())

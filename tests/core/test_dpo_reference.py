"""DPO on stored reference log-probabilities, the policy's in-graph per-token log-probabilities
and length buckets, against the implementation they replace (a live reference and
log-softmax over whole logits), plus the compiled graphs per bucket and the 124m memory."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.core.train_support import make_pairs, make_tokenizer, micro_model, single_thread  # noqa: F401 (fixture)
from wikigpt_core.chat import IGNORE_INDEX
from wikigpt_core.config import load_settings
from wikigpt_core.dpo import REFERENCE_FILE, stored_reference
from wikigpt_core.model import GPT
from wikigpt_core.model_io import save_model
from wikigpt_core.train import memory
from wikigpt_core.train.data import encode_pairs, pair_tensors
from wikigpt_core.train.objectives import DPOObjective, dpo_loss, reference_logps
from wikigpt_core.train.runtime import Runtime, compile_model

pytestmark = pytest.mark.usefixtures("single_thread")
BLOCK = 64


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def pairs(tok, tmp_path_factory):
    encoded, _ = encode_pairs(make_pairs(tmp_path_factory.mktemp("pairs"), n=12) / "pairs.jsonl", tok, BLOCK)
    return pair_tensors(encoded, tok.end_id)


def models(tok):
    """A policy and a reference that differ (so rewards and margins are not zero)."""
    torch.manual_seed(0)
    policy = GPT(micro_model(vocab_size=tok.vocab_size, block_size=BLOCK))
    torch.manual_seed(1)
    return policy, GPT(micro_model(vocab_size=tok.vocab_size, block_size=BLOCK))


def previous_dpo(policy, reference, batch, beta):
    """The implementation this replaces: trim to the last response column, run policy and
    reference live, log-softmax over the whole float32 logits."""
    used = (batch["chosen_targets"] != IGNORE_INDEX) | (batch["rejected_targets"] != IGNORE_INDEX)
    end = int(used.any(0).nonzero().max()) + 1
    idx = torch.cat([batch["chosen_idx"], batch["rejected_idx"]])[:, :end]
    tgt = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])[:, :end]

    def logps(model):
        logits, _ = model(idx, tgt)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * (tgt != IGNORE_INDEX)).sum(-1)

    n = batch["chosen_idx"].shape[0]
    pol = logps(policy)
    with torch.no_grad():
        ref = logps(reference)
    loss, cr, rr = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], beta)
    return loss.mean(), {"dpo/reward_accuracy": (cr > rr).float().mean(), "dpo/chosen_reward": cr.mean(),
                         "dpo/rejected_reward": rr.mean(), "dpo/margin": (cr - rr).mean()}


def test_stored_reference_step_equals_the_previous_implementation(tok, pairs):
    policy, reference = models(tok)
    batch = {k: v[:6] for k, v in pairs.items()}
    want_loss, want = previous_dpo(policy, reference, batch, 0.1)
    want_grads = torch.autograd.grad(want_loss, list(policy.parameters()))
    stored = {**batch, **reference_logps(reference, batch, 4, "cpu")}
    got_loss, got = DPOObjective(None, beta=0.1)(policy, stored)
    got_grads = torch.autograd.grad(got_loss, list(policy.parameters()))
    torch.testing.assert_close(got_loss, want_loss)
    assert want["dpo/margin"].abs() > 1e-3  # the models differ: the comparison means something
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=key)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    live_loss, _ = DPOObjective(reference, beta=0.1)(policy, batch)  # no stored values: live
    torch.testing.assert_close(live_loss, want_loss)


def test_stored_logps_equal_a_live_pass_pair_by_pair(tok, pairs):
    _, reference = models(tok)
    stored = reference_logps(reference, pairs, 5, "cpu")
    with torch.no_grad():
        for i in range(pairs["chosen_idx"].shape[0]):
            for side in ("chosen", "rejected"):
                n = int(pairs[f"{side}_len"][i])  # the pair alone, unpadded
                idx, tgt = pairs[f"{side}_idx"][i:i + 1, :n], pairs[f"{side}_targets"][i:i + 1, :n]
                logits, _ = reference(idx, tgt)
                live = torch.log_softmax(logits.float(), -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
                live = (live * (tgt != IGNORE_INDEX)).sum()
                torch.testing.assert_close(stored[f"ref_{side}"][i], live, atol=1e-4, rtol=1e-5)


def test_reference_is_stored_with_the_run_and_read_back(tok, pairs, tmp_path):
    _, reference = models(tok)
    save_model(reference, tmp_path / "sft")
    cfg = dataclasses.replace(load_settings("tiny", env=False).dpo, batch_size=4, precision="fp32")
    run_dir = tmp_path / "work" / "0123456789abcdef"
    run_dir.mkdir(parents=True)
    first = stored_reference(run_dir / REFERENCE_FILE, pairs, tmp_path / "sft", cfg, Runtime(torch.device("cpu")))
    assert (run_dir / REFERENCE_FILE).exists()
    # A resumed run reads them back: the SFT model is not even needed any more.
    again = stored_reference(run_dir / REFERENCE_FILE, pairs, tmp_path / "missing", cfg, Runtime(torch.device("cpu")))
    for key in first:
        assert torch.equal(first[key], again[key])


def test_compiled_policy_has_one_graph_per_length_bucket(tok, pairs):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    policy, reference = models(tok)
    data = {**pairs, **reference_logps(reference, pairs, 4, "cpu")}
    objective = DPOObjective(None, beta=0.1, bucket=8)
    compiled = compile_model(policy, "default")
    before = counters["stats"]["unique_graphs"]
    widths = []
    order = torch.argsort(torch.maximum(pairs["chosen_len"], pairs["rejected_len"]))
    for rows in (order[:3], order[-3:], order[3:6], order[-6:-3]):  # short and long micro-batches
        batch = {k: v[rows] for k, v in data.items()}
        widths.append(objective._trim(batch)["chosen_idx"].shape[1])
        loss, _ = objective(compiled, batch)
        loss.backward()
    buckets = set(widths)
    assert len(buckets) >= 2, widths  # the batches did fall into different buckets
    assert counters["stats"]["unique_graphs"] - before == len(buckets), (widths, counters["stats"])


def test_124m_dpo_at_8_pairs_of_1024_fits_under_12_gib():
    settings = load_settings("124m", env=False)
    e = memory.estimate("dpo", settings.model, settings.dpo, 8)
    print(f"124m DPO 8 x 1,024: {e.total_bytes / memory.GIB:.2f} GiB (tensors {e.peak_bytes / memory.GIB:.2f})")
    assert e.length == 1024 and e.step.frozen == 0  # no reference model in the step
    assert e.total_bytes < 12 * memory.GIB


def test_objective_without_reference_or_stored_values_says_what_to_do(tok, pairs):
    policy, _ = models(tok)
    with pytest.raises(ValueError, match="stored reference"):
        DPOObjective(None)(policy, {k: v[:2] for k, v in pairs.items()})

"""DPO: the loss against an independent implementation of the published formula, response-only
sequence log-probs, a frozen reference, and the run_dpo stage."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.core.train_support import make_pairs, make_tokenizer, micro_model, micro_train, single_thread  # noqa: F401 (fixture)
from wikigpt_core.chat import IGNORE_INDEX, render_prompt
from wikigpt_core.dpo import run_dpo
from wikigpt_core.model import GPT
from wikigpt_core.model_io import load_model, save_model
from wikigpt_core.train.data import encode_pairs, pair_tensors
from wikigpt_core.train.objectives import DPOObjective, dpo_loss, sequence_logps

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_dpo(pc, pr, rc, rr, beta):
    """Rafailov et al. (2023), eq. 7, per pair, in float64 Python:
    L = -log sigma(beta * log(pi(yw|x)/ref(yw|x)) - beta * log(pi(yl|x)/ref(yl|x)))."""
    z = beta * (pc - rc) - beta * (pr - rr)
    # log sigma(z) computed stably in both directions
    log_sig = -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))
    return -log_sig


def test_dpo_loss_matches_published_formula():
    pc = [-12.5, -40.0, -3.0, -7.25, -100.0]
    pr = [-15.0, -38.0, -3.0, -9.0, -20.0]
    rc = [-13.0, -41.0, -2.0, -7.0, -30.0]
    rr = [-14.0, -37.5, -4.0, -9.5, -25.0]
    for beta in (0.1, 0.5, 2.0):
        loss, cr, rj = dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (pc, pr, rc, rr)), beta)
        expected = [reference_dpo(*vals, beta) for vals in zip(pc, pr, rc, rr)]
        torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(cr, beta * (torch.tensor(pc) - torch.tensor(rc)).double())
        torch.testing.assert_close(rj, beta * (torch.tensor(pr) - torch.tensor(rr)).double())
    # equal log-ratios -> log 2; a large negative margin stays finite (no overflow)
    assert reference_dpo(-1, -1, -1, -1, 0.1) == pytest.approx(math.log(2))
    big, _, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                         torch.tensor([-2000.0]), 0.1)
    assert big.item() == pytest.approx(200.0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_sequence_logps_cover_response_tokens_only(tok):
    torch.manual_seed(0)
    model = GPT(micro_model(vocab_size=tok.vocab_size, block_size=64)).eval()
    prompt = render_prompt([{"role": "user", "content": "Where is the river?"}], tok)
    response = tok.encode("North of the city") + [tok.end_id]
    t = pair_tensors([(prompt, response, response[:2] + [tok.end_id])], tok.end_id)
    with torch.no_grad():
        got = sequence_logps(model, t["chosen_idx"], t["chosen_targets"])
        full = prompt + response
        logp = torch.log_softmax(model(torch.tensor([full]), all_logits=True)[0][0].float(), -1)
        manual = sum(logp[len(prompt) - 1 + j, tok_id] for j, tok_id in enumerate(response))
    assert got.item() == pytest.approx(manual.item(), abs=1e-4)
    assert (t["chosen_targets"] != IGNORE_INDEX).sum() == len(response)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(tok, tmp_path):
    torch.manual_seed(1)
    model = GPT(micro_model(vocab_size=tok.vocab_size, block_size=64))
    reference = GPT(micro_model(vocab_size=tok.vocab_size, block_size=64))
    reference.load_state_dict(model.state_dict())
    pairs, _ = encode_pairs(make_pairs(tmp_path) / "pairs.jsonl", tok, 64)
    batch = pair_tensors(pairs[:4], tok.end_id)
    obj = DPOObjective(reference, beta=0.1)
    loss, mets = obj(model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert mets["dpo/margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert not any(p.requires_grad for p in reference.parameters())  # frozen
    loss.backward()
    assert model.tok_emb.weight.grad is not None and reference.tok_emb.weight.grad is None


def test_run_dpo_stage(tmp_path, tok):
    torch.manual_seed(0)
    save_model(GPT(micro_model(vocab_size=tok.vocab_size, block_size=64)), tmp_path / "sft")
    (tmp_path / "tok").mkdir()
    tok.backend.save(str(tmp_path / "tok" / "tokenizer.json"))
    prefs = make_pairs(tmp_path / "prefs", n=16)
    seen = []
    res = run_dpo(micro_train(max_steps=8, lr=3e-3, warmup_steps=1, grad_accum=1), tmp_path / "sft", prefs,
                  tmp_path / "tok", tmp_path / "dpo", tmp_path / "work",
                  on_metrics=lambda m, s: seen.append((s, m)))
    st = res.stats
    assert st["steps"] == 8 and st["pairs"] == 16 and st["beta"] == 0.1
    assert st["initial_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy starts at the reference
    assert st["loss"] < st["initial_loss"] and st["margin"] > 0
    assert st["margin"] == pytest.approx(st["chosen_reward"] - st["rejected_reward"], abs=1e-5)
    # Every pair prefers the same reply ("the river museum") over random words, so training must
    # move the reward accuracy: 0 at step 1 (policy == reference: every reward is 0, none is
    # higher), most pairs ranked right by the last step.
    accuracy = [m["dpo/reward_accuracy"] for _, m in sorted(seen, key=lambda x: x[0]) if "dpo/reward_accuracy" in m]
    assert accuracy[0] == 0.0
    assert st["reward_accuracy"] == accuracy[-1] >= 0.75
    log = [json.loads(l) for l in (res.path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("sample" in row for row in log)
    # the reference (the SFT input) is untouched; the policy moved
    before, after = load_model(tmp_path / "sft"), load_model(res.path)
    assert not torch.equal(before.tok_emb.weight, after.tok_emb.weight)


def test_bad_pairs_and_overlong_pairs(tmp_path, tok):
    from wikigpt_core.train.data import DataError

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: bad preference pair"):
        encode_pairs(path, tok, 64)
    long = " ".join(["river"] * 200)
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": long,
                                "rejected": "no", "kind": "sampled"}) + "\n")
    pairs, stats = encode_pairs(path, tok, 64)
    assert pairs == [] and stats.dropped_too_long == 1

"""The model passes of preference sampling and evaluation, as the GPU box runs them: under bf16
autocast, with the prompts prefilled together. On CPU (bf16 forced) they must give the same
greedy text as float32.

The micro model is briefly trained to answer every prompt with one fixed reply, so its logits
have clear margins: bf16 rounding (about 1e-2 relative) cannot flip a greedy choice, as it can
on a random model's near-ties. Attention, the KV cache and the decode loop all take part."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.core.test_align_stages import EVAL_CFG, PREF_CFG, TEACHER, VOCAB, env, sft  # noqa: F401 - fixtures
from wikigpt_core.align.preferences import read_jsonl, run_preferences, sample_replies
from wikigpt_core.eval.gallery import load_gallery
from wikigpt_core.eval.generation import generate_replies, inference_runtime
from wikigpt_core.evaluate import run_eval
from wikigpt_core.generation import BatchDecoder, SamplingParams, Sequence, crop_conversation, prompt_budget
from wikigpt_core.generation.batch import prefill_groups
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.model_io import load_model, save_model

REPLY = "It was in the passage."
MAX_NEW = 16  # room for REPLY and its <|end|>
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _fixed_reply_examples(tok, prompts: list[str], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) (N, block - 1): each prompt as the generator renders it, then REPLY and
    <|end|>; only the reply is a target, everything else is -100."""
    reply = tok.encode(REPLY) + [tok.end_id]
    x = torch.zeros(len(prompts), block - 1, dtype=torch.long)
    y = torch.full_like(x, -100)
    for i, p in enumerate(prompts):
        ids, _ = crop_conversation(_user(p), tok, prompt_budget(block, MAX_NEW))
        seq = torch.tensor(ids + reply)
        x[i, :len(seq) - 1] = seq[:-1]
        y[i, len(ids) - 1:len(seq) - 1] = seq[len(ids):]
    return x, y


@pytest.fixture(scope="module")
def trained(env, sft):  # noqa: F811 - the imported fixtures
    """A two-layer model trained for a few steps to answer every prompt of these tests with
    REPLY; saved as a checkpoint, and checked to do so greedily in float32."""
    tok, root = env["tok"], env["root"]
    prompts = [g["prompt"] for g in load_gallery()]
    prompts += [r["messages"][0]["content"] for name in ("train", "heldout")
                for r in read_jsonl(sft[0] / f"{name}.jsonl")]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=2, n_head=2, n_embd=64,
                          mlp_multiple_of=32))
    x, y = _fixed_reply_examples(tok, prompts, model.config.block_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = torch.Generator().manual_seed(0)
    for _ in range(40):
        rows = torch.randint(len(x), (8,), generator=batches)
        _, loss = model(x[rows], y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    replies = generate_replies(model, tok, [_user(p) for p in prompts], max_new_tokens=MAX_NEW,
                               temperature=0.0, top_p=1.0, seed=0)
    assert {r.text for (r,) in replies} == {REPLY}, "training too short: not every reply is REPLY"
    save_model(model, root / "fixed_reply")
    return root / "fixed_reply"


def _record_logits_dtypes(model: GPT, seen: dict[str, set]) -> GPT:
    """Record the logits dtype of every forward, by pass: "perplexity" (with targets) or
    "generation". A decoder's prepacked view shares the model's hooks."""
    def hook(module, args, kwargs, out):
        kind = "perplexity" if len(args) > 1 or kwargs.get("targets") is not None else "generation"
        seen.setdefault(kind, set()).add(out[0].dtype)

    model.register_forward_hook(hook, with_kwargs=True)
    return model


@pytest.fixture
def recorded_loads(monkeypatch) -> dict[str, set]:
    """Every model a stage loads records its logits dtypes here."""
    import wikigpt_core.model_io as model_io

    seen: dict[str, set] = {}
    real = model_io.load_model
    monkeypatch.setattr(model_io, "load_model", lambda *a, **k: _record_logits_dtypes(real(*a, **k), seen))
    return seen


# --- batched prefill ---------------------------------------------------------------------------

def _decode(model, prompts: list[list[int]], *, together: bool, max_batch: int) -> tuple[list[Sequence], int]:
    """Greedy sequences with logprobs, and how many forwards prefilled (more than one token)."""
    prefills = []
    hook = model.tok_emb.register_forward_hook(lambda m, args, out: prefills.append(args[0].shape[1] > 1))
    try:
        params = SamplingParams(8, 0.0, 1.0, logprobs=True)
        seqs = [Sequence(p, params) for p in prompts]
        BatchDecoder(model, max_batch=max_batch, prefill_together=together).run(seqs)
    finally:
        hook.remove()
    return seqs, sum(prefills)


def test_prompts_prefilled_together_decode_as_prefilled_one_by_one(env):
    """Six prompts of different lengths, four rows: four prefill in one forward, the last two
    together once rows free up (into rows whose old lengths must not leak). Padding is never
    attended to: every token and its log-probability are the one-by-one ones."""
    tok = env["tok"]
    model = load_model(env["root"] / "base")  # random weights: any leak shows in the logprobs
    prompts = [tok.encode(r["text"][:40 * (i + 1)])[:10 * (i + 1)] for i, r in enumerate(env["rows"][:6])]
    assert len({len(p) for p in prompts}) == 6
    alone, alone_prefills = _decode(model, prompts, together=False, max_batch=4)
    together, together_prefills = _decode(model, prompts, together=True, max_batch=4)
    assert (alone_prefills, together_prefills) == (6, 2)
    assert [s.tokens for s in together] == [s.tokens for s in alone]
    for a, t in zip(alone, together):
        torch.testing.assert_close([lp.logprob for lp in t.logprobs], [lp.logprob for lp in a.logprobs],
                                   atol=1e-5, rtol=1e-5)


def test_prefill_groups_stay_within_the_padded_token_budget():
    seqs = [Sequence([1] * n) for n in (10, 30, 20, 50, 5)]
    groups = prefill_groups(seqs, budget=100)
    assert [[len(s.prompt) for s in g] for g in groups] == [[10, 30, 20], [50, 5]]
    assert all(len(g) * max(len(s.prompt) for s in g) <= 100 for g in groups)
    assert [len(g) for g in prefill_groups([Sequence([1] * 300)], budget=100)] == [1]  # alone, not refused


# --- preference sampling ----------------------------------------------------------------------

def test_preference_sampling_under_bf16_gives_the_fp32_greedy_text(env, sft, trained):  # noqa: F811
    rows = read_jsonl(sft[0] / "train.jsonl")[:4]
    cfg = dataclasses.replace(PREF_CFG, temperature=0.0, max_new_tokens=MAX_NEW)
    texts = {}
    for precision in ("fp32", "bf16"):
        seen: dict[str, set] = {}
        model = _record_logits_dtypes(load_model(trained), seen)
        with inference_runtime(precision).autocast():
            samples = sample_replies(model, env["tok"], rows, cfg)
        assert seen == {"generation": {DTYPE[precision]}}
        texts[precision] = [[r.text for r in s] for s in samples]
    assert texts["bf16"] == texts["fp32"] == [[REPLY] * cfg.samples_per_prompt] * len(rows)


def test_preference_stage_samples_under_the_autocast_it_reports(env, sft, trained, recorded_loads,  # noqa: F811
                                                                tmp_path):
    root = env["root"]
    res = run_preferences(PREF_CFG, TEACHER, trained, sft[0], root / "tokenizer", tmp_path / "prefs",
                          root / "cache", precision="bf16")
    assert recorded_loads == {"generation": {torch.bfloat16}}
    assert (res.stats["generation_device"], res.stats["generation_autocast"]) == ("cpu", "bfloat16")
    assert res.stats["pairs"] >= 1


# --- evaluation -------------------------------------------------------------------------------

def test_eval_passes_under_bf16_give_the_fp32_greedy_text(env, sft, trained, recorded_loads,  # noqa: F811
                                                          tmp_path):
    """Perplexity, the harness/pairwise replies and the gallery all run under autocast: the
    greedy texts are float32's, and the perplexity differs only by bf16 rounding."""
    root = env["root"]
    cfg = dataclasses.replace(EVAL_CFG, temperature=0.0, max_new_tokens=MAX_NEW)
    ckpts = {c: trained for c in ("base", "sft", "dpo")}
    reports, stats = {}, {}
    for precision in ("fp32", "bf16"):
        recorded_loads.clear()
        res = run_eval(cfg, TEACHER, ckpts, root / "shards", sft[0], root / "tokenizer", tmp_path / precision,
                       cache_dir=root / "cache", precision=precision)
        assert recorded_loads == {"perplexity": {DTYPE[precision]}, "generation": {DTYPE[precision]}}
        reports[precision] = json.loads((tmp_path / precision / "report.json").read_text())
        stats[precision] = res.stats
    fp32, bf16 = reports["fp32"], reports["bf16"]
    assert [g["sft"] for g in fp32["gallery"]] == [REPLY] * 20
    assert bf16["gallery"] == fp32["gallery"]
    assert bf16["harness"] == fp32["harness"] and bf16["pairwise"] == fp32["pairwise"]
    for c in ckpts:
        assert bf16["perplexity"][c] == pytest.approx(fp32["perplexity"][c], rel=0.05)
        assert bf16["perplexity"][c] != fp32["perplexity"][c]  # autocast really changed the numerics
    assert [stats[p]["eval_autocast"] for p in ("fp32", "bf16")] == ["float32", "bfloat16"]


def test_auto_precision_is_float32_on_cpu_and_unknown_names_are_refused():
    rt = inference_runtime("auto")
    assert rt.device == torch.device("cpu") and rt.autocast_dtype is None
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_runtime("fp8")

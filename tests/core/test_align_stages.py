"""The three stages end to end on real files: sft_dataset from a corpus cut from the enwiki
sample shipped in the gensim wheel, preference_dataset and eval_report with small real GPT
checkpoints and a real byte-level BPE tokenizer. Offline teacher/judge (no network); the same
stages against a real LLM server are in test_align_llamacpp.py."""
from __future__ import annotations

import bz2
import dataclasses
import importlib.util
import json
import math
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import mwparserfromhell
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.core.test_release_support import chain_model, spell

from wikigpt_core.align.passages import CorpusError
from wikigpt_core.align.preferences import DatasetError, run_preferences
from wikigpt_core.align.sft_data import run_sft_data
from wikigpt_core.artifacts import read_manifest
from wikigpt_core.config import EvalConfig, PreferenceConfig, SFTDataConfig, TeacherConfig
from wikigpt_core.eval.gallery import load_gallery
from wikigpt_core.eval.generation import generate_replies
from wikigpt_core.eval.perplexity import ShardError
from wikigpt_core.evaluate import run_eval
from wikigpt_core.llm.budget import TeacherBudgetError
from wikigpt_core.llm.offline import CUT_MARK, score_response
from wikigpt_core.model_io import load_model
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.model_io import save_model
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer

N_ARTICLES = 12
VOCAB = 512
TEACHER = TeacherConfig(backend="offline", concurrency=2)
SFT_CFG = SFTDataConfig(n_examples=48, heldout_fraction=0.25, passage_chars=300, max_passages_per_article=4)
PREF_CFG = PreferenceConfig(n_prompts=6, samples_per_prompt=4, false_premise_fraction=0.5,
                            max_new_tokens=8, min_margin=0.5)
EVAL_CFG = EvalConfig(ppl_batches=2, ppl_batch_size=2, harness_n=4, pairwise_n=4, max_new_tokens=8)
ANSWER = "It was."  # the "answers" checkpoint's greedy reply to every prompt (distinct characters)


def _sample_dump() -> Path:
    spec = importlib.util.find_spec("gensim")
    assert spec and spec.origin, "gensim (a project dependency) ships the enwiki sample"
    return next((Path(spec.origin).parent / "test" / "test_data").glob("enwiki-latest-pages-articles1*.bz2"))


def _corpus(path: Path) -> list[dict]:
    rows = []
    for _, el in ET.iterparse(bz2.open(_sample_dump())):
        if not el.tag.endswith("}page"):
            continue
        ns = el.tag[:-4]
        text = el.findtext(f"{ns}revision/{ns}text") or ""
        if el.findtext(f"{ns}ns") == "0" and el.find(f"{ns}redirect") is None and len(text) > 5_000:
            code = mwparserfromhell.parse(text)
            for t in code.filter_templates(recursive=False):
                try:
                    code.remove(t)
                except ValueError:
                    pass
            plain = re.sub(r"\n{2,}", "\n\n", code.strip_code()).strip()
            title = el.findtext(f"{ns}title")
            rows.append({"id": int(el.findtext(f"{ns}id")), "title": title,
                         "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"), "text": plain})
        el.clear()
        if len(rows) == N_ARTICLES:
            break
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "corpus.parquet")
    return rows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    rows = _corpus(root / "corpus")
    # A real byte-level BPE with the four reserved specials at ids 0..3.
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([r["text"] for r in rows], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (root / "tokenizer").mkdir()
    tk.save(str(root / "tokenizer" / "tokenizer.json"))
    tok = WikiTokenizer.load(root / "tokenizer")
    ids: list[int] = []
    for r in rows[:3]:
        ids += tok.encode(r["text"][:4_000]) + [tok.doc_id]
    (root / "shards").mkdir()
    np.array(ids, dtype=np.uint16).tofile(root / "shards" / "val.bin")

    cfg = GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=1, n_head=2, n_embd=32, mlp_multiple_of=32)
    for seed, name in enumerate(("base", "sft", "dpo")):
        torch.manual_seed(seed)
        model = GPT(cfg)
        if name == "dpo":
            _always_end(model, tok.end_id)
        if name == "sft":
            _sometimes_end(model, tok.end_id)
        save_model(model, root / name)
    # A checkpoint that answers every prompt with ANSWER and stops: function words only, so the
    # rule judge counts it fully grounded, with no cut-off penalty. It scores well above the
    # random base (cut off at the token limit) and the empty always-<|end|> reply.
    save_model(chain_model(tok, spell(tok, ANSWER), block_size=128), root / "answers")
    return {"root": root, "rows": rows, "tok": tok}


def _always_end(model: GPT, end_id: int, scale: float = 2.0) -> None:
    """Make a checkpoint that answers every prompt with <|end|> at once: every embedding
    shares one direction u and the (tied) <|end|> row is a large multiple of u."""
    with torch.no_grad():
        u = torch.ones(model.config.n_embd)
        emb = model.tok_emb.weight
        emb.mul_(0.01).add_(u)
        emb[end_id] = scale * u


def _sometimes_end(model: GPT, end_id: int) -> None:
    """A checkpoint whose samples (temperature 0.8) sometimes stop after a few tokens and
    sometimes run to the token limit, so the judge has better and worse samples to rank: the
    <|end|> row only slightly longer than the others (greedy decoding stops at once)."""
    _always_end(model, end_id, scale=1.1)


@pytest.fixture(scope="module")
def sft(env):
    out = env["root"] / "sft_dataset"
    res = run_sft_data(SFT_CFG, TEACHER, env["root"] / "corpus", out, env["root"] / "cache")
    return out, res


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_dataset_files_schema_and_filters(env, sft):
    out, res = sft
    train, heldout = _jsonl(out / "train.jsonl"), _jsonl(out / "heldout.jsonl")
    passages = {p["passage_id"]: p for p in _jsonl(out / "passages.jsonl")}
    s = res.stats
    assert s["examples_train"] == len(train) and s["examples_heldout"] == len(heldout)
    assert len(train) + len(heldout) == SFT_CFG.n_examples
    assert (s["examples_qa"], s["examples_summarize"], s["examples_extract"]) == (24, 12, 12)
    assert len(heldout) > 0 and len(train) > len(heldout)
    prompts = set()
    for ex in train + heldout:
        assert set(ex) == {"messages", "task", "answer", "passage_id"}
        (u, a) = ex["messages"]
        assert u["role"] == "user" and a["role"] == "assistant" and a["content"].strip()
        p = passages[ex["passage_id"]]
        assert p["text"] in u["content"]  # grounded: the passage is in the prompt
        if ex["task"] == "qa":
            assert ex["answer"] and ex["answer"].lower() in p["text"].lower()
        prompts.add(u["content"])
    assert len(prompts) == len(train) + len(heldout)  # no duplicate prompts
    # The split is by article.
    art = lambda rows: {passages[r["passage_id"]]["article_id"] for r in rows}  # noqa: E731
    assert not art(train) & art(heldout)
    assert len(art(train + heldout)) >= N_ARTICLES - 2  # spread over the articles
    assert s["teacher_requests"] > 0 and s["teacher_seconds"] >= 0 and "dropped_duplicate_prompt" in s
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-sa-4.0") and "## Quality filters" in card
    assert read_manifest(out)["content_hash"] == res.content_hash


def test_sft_dataset_rerun_is_served_from_cache(env, sft):
    out, first = sft
    res = run_sft_data(SFT_CFG, TEACHER, env["root"] / "corpus", env["root"] / "sft_again", env["root"] / "cache")
    assert res.stats["teacher_requests"] == 0 and res.stats["teacher_cache_hits"] > 0
    assert res.content_hash == first.content_hash


def test_sft_dataset_bad_corpus_is_a_typed_error(tmp_path):
    with pytest.raises(CorpusError, match="corpus.parquet"):
        run_sft_data(SFT_CFG, TEACHER, tmp_path, tmp_path / "out", tmp_path / "cache")
    pq.write_table(pa.table({"id": [1], "title": ["T"]}), tmp_path / "corpus.parquet")
    with pytest.raises(CorpusError, match="columns"):
        run_sft_data(SFT_CFG, TEACHER, tmp_path, tmp_path / "out", tmp_path / "cache")
    pq.write_table(pa.table({"id": [1], "title": ["T"], "url": ["u"], "text": ["thumb|x|y"]}), tmp_path / "corpus.parquet")
    with pytest.raises(CorpusError, match="no usable passages"):
        run_sft_data(SFT_CFG, TEACHER, tmp_path, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_preferences(env, sft):
    root = env["root"]
    res = run_preferences(PREF_CFG, TEACHER, root / "sft", sft[0], root / "tokenizer", root / "prefs", root / "cache")
    pairs = _jsonl(root / "prefs" / "pairs.jsonl")
    s = res.stats
    assert s["pairs"] == len(pairs) == s["pairs_sampled"] + s["pairs_false_premise"]
    assert s["pairs_false_premise"] == 3
    assert s["pairs_sampled"] + s["dropped_tie"] + s["dropped_identical"] == s["prompts_sampled"] == 3
    for p in pairs:
        assert set(p) == {"prompt", "chosen", "rejected", "kind"}
        assert p["prompt"][-1]["role"] == "user" and p["chosen"] != p["rejected"]
    fps = [p for p in pairs if p["kind"] == "false_premise"]
    assert all("false premise" in p["chosen"] and "false premise" not in p["rejected"] for p in fps)
    gallery = {g["prompt"] for g in load_gallery()}
    assert not gallery & {p["prompt"][0]["content"] for p in fps}
    # The judge really ranked samples: at least one sampled pair, every kept one cleared the
    # margin, and the rule judge (which scores each response alone) prefers chosen to rejected.
    assert s["pairs_sampled"] >= 1
    assert s["mean_judge_margin"] >= PREF_CFG.min_margin
    rows = {r["messages"][0]["content"]: r for r in _jsonl(sft[0] / "train.jsonl")}
    for p in (p for p in pairs if p["kind"] == "sampled"):
        q = p["prompt"][0]["content"]
        ref = rows[q]["answer"] or rows[q]["messages"][1]["content"]
        # A reply cut off at the token limit is shown to the judge marked; try both readings.
        best = max(score_response(q, p["chosen"] + m, ref) for m in ("", " " + CUT_MARK))
        worst = min(score_response(q, p["rejected"] + m, ref) for m in ("", " " + CUT_MARK))
        assert best > worst and best - worst >= PREF_CFG.min_margin  # no reading of the pair falls below it
    assert s["teacher_replies_failed"] == 0 and s["teacher_requests_per_item"] == 1.0
    # Same inputs, same seeds: the rerun sends the judge and teacher nothing.
    again = run_preferences(PREF_CFG, TEACHER, root / "sft", sft[0], root / "tokenizer", root / "prefs2", root / "cache")
    assert again.stats["teacher_requests"] == 0 and again.content_hash == res.content_hash


def test_preferences_below_the_margin_are_dropped_as_ties(env, sft, tmp_path):
    """Rule scores lie in 1..10: no gap reaches a margin of 9.5, so every sampled pair is dropped
    as a tie and only the false-premise pairs remain (the judge's verdicts come from the cache)."""
    root = env["root"]
    cfg = dataclasses.replace(PREF_CFG, min_margin=9.5)
    res = run_preferences(cfg, TEACHER, root / "sft", sft[0], root / "tokenizer", tmp_path / "prefs", root / "cache")
    s = res.stats
    assert s["pairs_sampled"] == 0 and s["mean_judge_margin"] == 0.0
    assert s["dropped_tie"] == s["prompts_sampled"] - s["dropped_identical"] > 0
    assert s["pairs"] == s["pairs_false_premise"] == 3
    assert {p["kind"] for p in _jsonl(tmp_path / "prefs" / "pairs.jsonl")} == {"false_premise"}


def test_eval_report(env, sft):
    root = env["root"]
    # The SFT slot holds the "answers" checkpoint, so both pairwise passes have a known direction:
    # its grounded, stopped reply beats the random base's cut-off babble on every prompt, and the
    # empty always-<|end|> reply loses to it on every prompt.
    ckpts = {"base": root / "base", "sft": root / "answers", "dpo": root / "dpo"}
    upstream = {"base_checkpoint": {"seconds": 100.0, "gpu_hours": 0.5, "cost_usd": 0.2},
                "sft_dataset": {"seconds": 3.5, "rows": 7}}
    res = run_eval(EVAL_CFG, TEACHER, ckpts, root / "shards", sft[0], root / "tokenizer", root / "report",
                   upstream=upstream, cache_dir=root / "cache")
    report = json.loads((root / "report" / "report.json").read_text())
    assert list(report) == ["perplexity", "pairwise", "harness", "gallery"]
    assert set(report["perplexity"]) == {"base", "sft", "dpo"}
    assert all(math.isfinite(v) and v > 1 for v in report["perplexity"].values())
    assert report["perplexity"]["dpo"] > report["perplexity"]["base"]  # the always-<|end|> model is worse
    expected = _expected_pairwise(env, ckpts, sft[0])
    for k in ("sft_vs_base", "dpo_vs_sft"):
        v = report["pairwise"][k]
        assert set(v) == {"win", "tie", "loss", "n"} and v["n"] == EVAL_CFG.pairwise_n
        assert v == expected[k]
    # Real wins and real losses, each in its known direction (a swap of win and loss, or a
    # judge that cannot tell the replies apart, fails here).
    assert report["pairwise"]["sft_vs_base"] == {"win": 1.0, "tie": 0.0, "loss": 0.0, "n": EVAL_CFG.pairwise_n}
    assert report["pairwise"]["dpo_vs_sft"] == {"win": 0.0, "tie": 0.0, "loss": 1.0, "n": EVAL_CFG.pairwise_n}
    metrics = {"exact_match", "contains_answer", "stopped", "length_ok", "distinct3"}
    assert set(report["harness"]) == {"base", "sft", "dpo"}
    assert all(set(h) == metrics for h in report["harness"].values())
    assert report["harness"]["dpo"]["stopped"] == 1.0 and report["harness"]["dpo"]["length_ok"] == 1.0
    assert report["harness"]["base"]["stopped"] < 1.0  # a random model rarely emits <|end|>
    assert len(report["gallery"]) == 20
    assert all(set(g) == {"id", "type", "prompt", "base", "sft", "dpo"} for g in report["gallery"])
    assert [g["id"] for g in report["gallery"]] == list(range(1, 21))
    assert all(g["dpo"] == "" for g in report["gallery"])  # it stops at once, kept verbatim

    s = res.stats
    assert s["ppl_base"] == pytest.approx(report["perplexity"]["base"], rel=1e-3)
    assert s["harness_dpo_stopped"] == 1.0 and "sft_vs_base_win" in s and "dpo_vs_sft_tie" in s
    flat = {k: v for k, v in s.items() if not k.endswith("_table")}
    assert all(isinstance(v, (int, float, str)) for v in flat.values())
    assert {r["checkpoint"] for r in s["perplexity_table"]} == {"base", "sft", "dpo"}
    assert len(s["harness_table"]) == 3 and len(s["pairwise_table"]) == 2
    cost = {r["asset"]: r for r in s["cost_table"]}
    assert cost["base_checkpoint"]["cost_usd"] == 0.2 and cost["sft_dataset"]["gpu_hours"] is None
    md = (root / "report" / "report.md").read_text()
    for heading in ("## Perplexity", "## Pairwise judge", "## Judge-free harness", "## Cost and time", "## Gallery"):
        assert heading in md
    costs = root / "report" / "run" / "costs.md"  # the run record, when the writer keeps one
    assert "Napoleon" in md and "base_checkpoint" in (costs.read_text() if costs.exists() else md)
    assert "No model judged these pairs" in md and "not a language model" in md
    assert md.count("_(no <|end|>: cut off at the token limit)_") >= 20  # base replies; dpo stops at once

    # Same inputs, same seeds: identical bytes, so the same DataVersion; the judge is not asked again.
    again = run_eval(EVAL_CFG, TEACHER, ckpts, root / "shards", sft[0], root / "tokenizer", root / "report2",
                     upstream=upstream, cache_dir=root / "cache")
    assert again.content_hash == res.content_hash and again.stats["judge_requests"] == 0


def _expected_pairwise(env, ckpts: dict[str, Path], sft_dir: Path) -> dict[str, dict]:
    """win/tie/loss recomputed here: the same greedy replies run_eval decodes, each scored alone
    by the rule judge (whose score ignores position, so both orders agree iff the scores differ)."""
    tok = env["tok"]
    heldout = _jsonl(sft_dir / "heldout.jsonl")
    random.Random(EVAL_CFG.seed).shuffle(heldout)
    harness_rows = [r for r in heldout if r.get("task") == "qa" and r.get("answer")][:EVAL_CFG.harness_n]
    pair_rows = heldout[:EVAL_CFG.pairwise_n]
    prompts = list(dict.fromkeys(r["messages"][0]["content"] for r in harness_rows + pair_rows))
    views = {}
    for c in ("base", "sft", "dpo"):
        gen = generate_replies(load_model(ckpts[c]), tok, [[{"role": "user", "content": p}] for p in prompts],
                               max_new_tokens=EVAL_CFG.max_new_tokens, temperature=EVAL_CFG.harness_temperature,
                               top_p=EVAL_CFG.top_p, seed=EVAL_CFG.seed)
        views[c] = {p: (r.text if r.stopped else f"{r.text} {CUT_MARK}".strip()) for p, (r,) in zip(prompts, gen)}
    out = {}
    for name, cand, base in (("sft_vs_base", "sft", "base"), ("dpo_vs_sft", "dpo", "sft")):
        counts = {"win": 0, "tie": 0, "loss": 0}
        for r in pair_rows:
            q = r["messages"][0]["content"]
            ref = (r.get("answer") if r.get("task") == "qa" else r["messages"][1]["content"]) or ""
            d = score_response(q, views[cand][q], ref) - score_response(q, views[base][q], ref)
            counts["win" if d > 0 else "loss" if d < 0 else "tie"] += 1
        n = len(pair_rows)
        out[name] = {k: round(v / n, 4) for k, v in counts.items()} | {"n": n}
    return out


def _no_artifact(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_sft_dataset_whose_replies_are_all_rejected_trips_the_budget(env, tmp_path):
    cfg = dataclasses.replace(SFT_CFG, min_grounding=1.01)  # no reply can pass
    out = tmp_path / "sft"
    with pytest.raises(TeacherBudgetError, match=r"sft_dataset: stopped by the teacher failure budget: "
                       r"(\d+) of \1 teacher replies \(100%\).*ungrounded x\d+ \(e\.g\. '\{.*"
                       r"for 48 examples asked for\. Nothing was published"):
        run_sft_data(cfg, TEACHER, env["root"] / "corpus", out, tmp_path / "cache")
    _no_artifact(out)


def test_sft_dataset_request_cap_and_minimum(env, tmp_path):
    out = tmp_path / "sft"
    capped = dataclasses.replace(TEACHER, max_requests_per_item=0.5)  # 24 requests for 48 examples
    with pytest.raises(TeacherBudgetError, match=r"request cap of 24 requests for 48 examples"):
        run_sft_data(SFT_CFG, capped, env["root"] / "corpus", out, tmp_path / "cache")
    _no_artifact(out)
    too_many = dataclasses.replace(SFT_CFG, n_examples=400, min_examples=300)  # the passages run out first
    with pytest.raises(TeacherBudgetError, match=r"only \d+ examples resulted, fewer than the minimum of 300 "
                                                 r"\(sft_data\.min_examples\)"):
        run_sft_data(too_many, TEACHER, env["root"] / "corpus", out, tmp_path / "cache")
    _no_artifact(out)


def test_preferences_below_the_minimum_publish_nothing(env, sft, tmp_path):
    root = env["root"]
    cfg = dataclasses.replace(PREF_CFG, min_pairs=PREF_CFG.n_prompts + 1)
    out = tmp_path / "prefs"
    with pytest.raises(TeacherBudgetError, match=r"preference_dataset: .*fewer than the minimum of 7 "
                                                 r"\(preference\.min_pairs\)"):
        run_preferences(cfg, TEACHER, root / "sft", sft[0], root / "tokenizer", out, root / "cache")
    _no_artifact(out)


def test_eval_errors_name_the_input(env, sft, tmp_path):
    root = env["root"]
    ckpts = {c: root / c for c in ("base", "sft", "dpo")}
    (tmp_path / "shards").mkdir()
    np.zeros(10, dtype=np.uint16).tofile(tmp_path / "shards" / "val.bin")
    with pytest.raises(ShardError, match="val.bin"):
        run_eval(EVAL_CFG, TEACHER, ckpts, tmp_path / "shards", sft[0], root / "tokenizer", tmp_path / "r")
    with pytest.raises(DatasetError, match="heldout.jsonl"):
        run_eval(EVAL_CFG, TEACHER, ckpts, root / "shards", tmp_path, root / "tokenizer", tmp_path / "r")
    with pytest.raises(ValueError, match="dpo"):
        run_eval(EVAL_CFG, TEACHER, {"base": ckpts["base"]}, root / "shards", sft[0], root / "tokenizer", tmp_path / "r")


def test_generation_crops_long_prompts_and_reports_stopping(env):
    from wikigpt_core.eval.generation import generate_replies
    from wikigpt_core.model_io import load_model

    root, tok = env["root"], env["tok"]
    long_prompt = [{"role": "user", "content": env["rows"][0]["text"][:3_000] + "\n\nQuestion: what?"}]
    assert len(tok.encode(long_prompt[0]["content"])) > 128  # longer than the whole context
    (base,), (dpo,) = [generate_replies(load_model(root / c), tok, [long_prompt], max_new_tokens=8,
                                        temperature=0.7, top_p=0.9, seed=1, samples=2)[0][:1]
                       for c in ("base", "dpo")]
    assert 1 <= base.new_tokens <= 8
    assert dpo.stopped and dpo.text == "" and dpo.new_tokens == 1  # <|end|> at once, never in the text

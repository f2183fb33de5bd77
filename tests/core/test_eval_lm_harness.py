"""Standard benchmarks through EleutherAI's lm-evaluation-harness, offline: a small local lm-eval
task (YAML config + JSONL) written here from articles the project's own dump and clean stages
extract from the embedded enwiki sample, run by `eval_report` on three real checkpoints through
the HF release format, and cross-checked against the core model's own log-likelihoods. Without
the Hub (HF_HUB_OFFLINE=1 for every test), the standard tasks are reported unavailable and the
rest of the report is still written."""
from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.config import CleanConfig, DumpConfig, EvalConfig, TeacherConfig
from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dump import run_dump
from wikigpt_core.eval.lm_harness import (GPT2_124M, LM_EVAL_FILE, LmEvalOutcome, lm_eval_markdown,
                                          lm_eval_rows, read_lm_eval)
from wikigpt_core.eval.report import render_table
from wikigpt_core.evaluate import run_eval
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.model_io import load_model, save_model
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer
from wikigpt_core.train.stage import training_log

CHECKPOINTS = ("base", "sft", "dpo")
TASK = "wiki_cloze"
N_DOCS = 12
EVAL_CFG = EvalConfig(ppl_batches=1, ppl_batch_size=2, harness_n=2, pairwise_n=2, max_new_tokens=4,
                      lm_eval=True, lm_eval_tasks=[TASK], lm_eval_batch_size=8)
TEACHER = TeacherConfig(backend="offline", concurrency=1)


def _cloze_docs(texts: list[str]) -> list[dict]:
    """Last-word cloze items: the sentence without its last word, four candidate words (the true
    one and the last words of other sentences), the true one's position rotating."""
    sentences = [s for t in texts for s in re.split(r"(?<=[.!?])\s+", t)]
    sentences = [s.rstrip(".!?") for s in sentences if 8 <= len(s.split()) <= 24 and s.isascii()]
    rng = random.Random(0)
    picked = rng.sample(sentences, N_DOCS + 3)
    docs = []
    for i, s in enumerate(picked[:N_DOCS]):
        words = s.split()
        others = [p.split()[-1] for p in picked if p is not s and p.split()[-1] != words[-1]][:3]
        choices = others[:]
        choices.insert(i % 4, words[-1])
        docs.append({"context": " ".join(words[:-1]), "choices": choices, "label": i % 4})
    return docs


def _write_task(directory: Path, docs: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'data.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return directory


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    run_dump(DumpConfig(), root / "dump", root / "w_dump")
    run_clean(CleanConfig(min_chars=500), root / "dump", root / "clean", root / "w_clean")
    texts = pq.read_table(root / "clean" / "articles.parquet")["text"].to_pylist()

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts[:20], trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    (root / "tokenizer").mkdir()
    tk.save(str(root / "tokenizer" / "tokenizer.json"))
    tok = WikiTokenizer.load(root / "tokenizer")
    (root / "shards").mkdir()
    np.array(tok.encode(texts[0][:3_000]), dtype=np.uint16).tofile(root / "shards" / "val.bin")

    cfg = GPTConfig(vocab_size=512, block_size=96, n_layer=1, n_head=2, n_embd=32, mlp_multiple_of=32)
    for seed, name in enumerate(CHECKPOINTS):
        torch.manual_seed(seed)
        save_model(GPT(cfg), root / name)
        log = training_log(root / name)  # the run record a training stage leaves
        log.parent.mkdir(parents=True)
        log.write_text("".join(json.dumps({"step": s, "loss/train": 6.2 - 0.01 * s * (seed + 1)}) + "\n"
                               for s in range(1, 21)))
    heldout = [{"task": "qa", "answer": "Paris",
                "messages": [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": "Paris"}]},
               {"task": "qa", "answer": "1066",
                "messages": [{"role": "user", "content": "When was the Battle of Hastings?"},
                             {"role": "assistant", "content": "1066"}]}]
    (root / "sft_dataset").mkdir()
    (root / "sft_dataset" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    docs = _cloze_docs(texts)
    task_dir = _write_task(root / "task", docs)
    ckpts = {c: root / c for c in CHECKPOINTS}
    return {"root": root, "tok": tok, "docs": docs, "task_dir": task_dir, "ckpts": ckpts}


@pytest.fixture(scope="module")
def local_report(env):
    cfg = dataclasses.replace(EVAL_CFG, lm_eval_include_path=str(env["task_dir"]))
    root = env["root"]
    res = run_eval(cfg, TEACHER, env["ckpts"], root / "shards", root / "sft_dataset", root / "tokenizer",
                   root / "report", cache_dir=root / "cache")
    return res, root / "report"


def _core_accuracy(model, tok: WikiTokenizer, docs: list[dict]) -> float:
    """lm-eval's multiple-choice accuracy recomputed with the core model: the log-likelihood
    of " " + choice after the context, tokenized as the harness does (whole string, split at
    the context's token count), the highest one picked."""
    hits = 0
    with torch.no_grad():
        for d in docs:
            ctx = tok.encode(d["context"])
            scores = []
            for choice in d["choices"]:
                whole = tok.encode(d["context"] + " " + choice)
                cont = whole[len(ctx):]
                x = torch.tensor([whole[:-1]])
                logits, _ = model(x, x)  # with targets the model returns every position's logits
                logp = torch.log_softmax(logits[0].double(), -1)
                scores.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
            hits += int(np.argmax(scores) == d["label"])
    return hits / len(docs)


def test_local_task_runs_on_all_three_checkpoints_through_the_hf_format(env, local_report):
    res, report_dir = local_report
    outcome = read_lm_eval(report_dir)
    assert outcome.status == "ok" and outcome.tasks == [TASK] and outcome.lm_eval_version
    assert set(outcome.results) == set(CHECKPOINTS)
    for c in CHECKPOINTS:
        acc = outcome.results[c][TASK]["acc"]
        assert acc == pytest.approx(_core_accuracy(load_model(env["ckpts"][c]), env["tok"], env["docs"]))
    assert res.stats["lm_eval_status"] == "ok"
    rows = res.stats["lm_eval_table"]
    assert [(r["task"], r["metric"]) for r in rows] == [(TASK, "acc")]
    assert {c: rows[0][c] for c in CHECKPOINTS} == {c: outcome.results[c][TASK]["acc"] for c in CHECKPOINTS}
    assert rows[0]["gpt2_124m"] is None  # no published figure for a local task


def test_report_shows_the_benchmark_table_and_ships_charts(local_report):
    _, report_dir = local_report
    md = (report_dir / "report.md").read_text()
    assert "## Standard benchmarks" in md and f"| {TASK} | acc |" in md and "gpt2_124m" in md
    assert "lm-evaluation-harness" in md and "pretrained=gpt2" in md  # where GPT-2's figures come from
    pngs = sorted(p.name for p in (report_dir / "charts").glob("*.png"))
    assert pngs == sorted(["loss_base.png", "loss_sft.png", "loss_dpo.png", "dpo_rewards.png",
                           "perplexity.png", "win_tie_loss.png"])
    for name in pngs:
        assert f"(charts/{name})" in md
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs) and 'src="charts/' not in page
    assert list(json.loads((report_dir / "report.json").read_text())) == ["perplexity", "pairwise", "harness", "gallery"]


def test_without_the_hub_the_table_says_so_and_the_report_still_materializes(env):
    root = env["root"]
    cfg = dataclasses.replace(EVAL_CFG, lm_eval_tasks=["hellaswag", "arc_easy"])
    res = run_eval(cfg, TEACHER, env["ckpts"], root / "shards", root / "sft_dataset", root / "tokenizer",
                   root / "report_offline", cache_dir=root / "cache")
    outcome = read_lm_eval(root / "report_offline")
    assert outcome.status == "unavailable" and outcome.results == {}
    # The reason is the loader's own error (offline Hub, or its HTTP client refusing to connect).
    assert "could not load the task datasets" in outcome.reason
    md = (root / "report_offline" / "report.md").read_text()
    assert "**Not available in this run:**" in md
    assert "## Perplexity" in md and "## Gallery" in md and (root / "report_offline" / "report.html").is_file()
    assert res.stats["lm_eval_status"] == "unavailable" and "lm_eval_table" not in res.stats
    assert res.content_hash


def test_off_by_default_for_tiny_and_on_for_the_real_profiles():
    from wikigpt_core.config import load_settings

    assert load_settings("tiny").eval.lm_eval is False
    for profile in ("124m", "350m"):
        cfg = load_settings(profile).eval
        assert cfg.lm_eval is True
        assert set(cfg.lm_eval_tasks) == {"hellaswag", "arc_easy", "arc_challenge", "piqa",
                                          "lambada_openai", "winogrande"}


def test_rows_put_each_checkpoint_beside_the_published_gpt2_figure():
    outcome = LmEvalOutcome("ok", tasks=["hellaswag", "lambada_openai"], results={
        "base": {"hellaswag": {"acc": 0.26, "acc_norm": 0.27}, "lambada_openai": {"acc": 0.01, "perplexity": 9e4}},
        "sft": {"hellaswag": {"acc": 0.25, "acc_norm": 0.26}, "lambada_openai": {"acc": 0.0, "perplexity": 1e5}},
        "dpo": {"hellaswag": {"acc": 0.25, "acc_norm": 0.25}, "lambada_openai": {"acc": 0.0, "perplexity": 2e5}}},
        lm_eval_version="0.4.13")
    rows = {(r["task"], r["metric"]): r for r in lm_eval_rows(outcome)}
    assert rows[("HellaSwag", "acc_norm")]["gpt2_124m"] == GPT2_124M[("hellaswag", "acc_norm")] == 0.3114
    assert rows[("LAMBADA (OpenAI)", "perplexity")]["gpt2_124m"] == 40.05
    assert rows[("HellaSwag", "acc")]["sft"] == 0.25
    md = lm_eval_markdown(outcome, render_table)
    assert "| HellaSwag | acc_norm | 0.27 | 0.26 | 0.25 | 0.3114 |" in md
    assert "Not run for this profile" in lm_eval_markdown(LmEvalOutcome("off"), render_table)


def test_missing_outcome_file_reads_as_off(tmp_path):
    assert read_lm_eval(tmp_path).status == "off"
    (tmp_path / LM_EVAL_FILE).write_text(json.dumps(LmEvalOutcome("unavailable", reason="no Hub").to_json()))
    assert read_lm_eval(tmp_path).reason == "no Hub"


def test_lm_eval_forwards_run_under_the_stage_autocast_when_the_harness_can():
    """lm-eval 0.4.9+ takes `mixed_precision_dtype` (its forwards under autocast); an older HFLM
    has no such argument and must not be given one."""
    from wikigpt_core.eval.lm_harness import _autocast_args

    class NewHFLM:
        def __init__(self, pretrained, mixed_precision_dtype=None): ...

    class OldHFLM:
        def __init__(self, pretrained, dtype="auto"): ...

    assert _autocast_args(NewHFLM, torch.bfloat16) == {"mixed_precision_dtype": torch.bfloat16}
    assert _autocast_args(NewHFLM, None) == {}  # float32: no autocast asked
    assert _autocast_args(OldHFLM, torch.bfloat16) == {}

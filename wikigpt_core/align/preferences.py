"""The `preference_dataset` stage: (chosen, rejected) pairs for DPO.

Two kinds of pair:
- sampled: the SFT model answers a training prompt several times; the judge compares the
  samples in both orders (position-debiased); the best becomes chosen, the worst rejected.
  Pairs the judge cannot separate (tie, or a margin below `min_margin`) are dropped.
- false_premise: a question that rests on a false premise (from corpus entities); the teacher
  writes a refusal that names the false premise (chosen) and an invented answer (rejected).

A launched stage: the sampling runs on the GPU box under the runtime's autocast (bf16 on CUDA),
every prompt's samples prefilled together; the judge and teacher are reached over HTTP.
"""
from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from wikigpt_core.align.false_premise import gallery_prompts, make_false_premises
from wikigpt_core.align.teacher import FalsePremiseSpec, Teacher
from wikigpt_core import jsonl
from wikigpt_core.artifacts import ArtifactWriter, StageResult
from wikigpt_core.config import PreferenceConfig, TeacherConfig
from wikigpt_core.eval.generation import Reply, autocast_label, generate_replies, inference_runtime
from wikigpt_core.llm.budget import FailureBudget, request_cap
from wikigpt_core.llm.client import Failure, make_client
from wikigpt_core.llm.judge import Judge, PairCase, PairOutcome, judge_debiased, judge_text
from wikigpt_core.llm.labels import is_rule_system, who


class DatasetError(ValueError):
    """An SFT dataset directory that is missing files or holds malformed lines."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of one of the SFT dataset's files; DatasetError if it is missing or malformed."""
    return jsonl.read_jsonl(path, DatasetError, missing_hint="materialize the `sft_dataset` asset first")


def rank_samples(n_samples: int, outcomes: dict[tuple[int, int], PairOutcome]) -> tuple[int, int, float] | None:
    """(best index, worst index, margin) from debiased round-robin outcomes (keyed by the pair
    (i, j), i < j, sample i as candidate), or None when the best did not clearly beat the worst."""
    wins: Counter[int] = Counter()
    margin: Counter[int] = Counter()
    for (i, j), o in outcomes.items():
        wins[i] += o.outcome == "win"
        wins[j] += o.outcome == "loss"
        margin[i] += o.margin
        margin[j] -= o.margin
    order = sorted(range(n_samples), key=lambda k: (wins[k], margin[k]), reverse=True)
    best, worst = order[0], order[-1]
    if (best, worst) in outcomes:
        o = outcomes[(best, worst)]
        won, m = o.outcome == "win", o.margin
    else:
        o = outcomes[(worst, best)]
        won, m = o.outcome == "loss", -o.margin
    return (best, worst, m) if won else None


def judge_samples(judge: Judge, questions: list[str], references: list[str],
                  samples: list[list[Reply]]) -> list[tuple[int, int, float] | None]:
    """Rank every prompt's samples; all comparisons go to the judge as one concurrent batch."""
    keys, cases = [], []
    for p, (q, ref, replies) in enumerate(zip(questions, references, samples)):
        for i, j in itertools.combinations(range(len(replies)), 2):
            keys.append((p, i, j))
            cases.append(PairCase(q, judge_text(replies[i]), judge_text(replies[j]), ref))
    per_prompt: list[dict[tuple[int, int], PairOutcome]] = [{} for _ in samples]
    for (p, i, j), o in zip(keys, judge_debiased(judge, cases)):
        per_prompt[p][(i, j)] = o
    return [rank_samples(len(r), oc) if oc else None for r, oc in zip(samples, per_prompt)]


def _entities(sft_dataset_dir: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """{title: passage text} for false-premise questions (passages.jsonl, else the QA prompts)."""
    path = sft_dataset_dir / "passages.jsonl"
    ents: dict[str, str] = {}
    if path.exists():
        for p in read_jsonl(path):
            ents[p["title"]] = ents.get(p["title"], "") + " " + p["text"]
    else:
        for r in rows:
            content = r["messages"][0]["content"]
            if content.startswith('Answer the question using the passage from "'):
                title = content.split('"', 2)[1]
                ents[title] = ents.get(title, "") + " " + content.split("\n\n", 2)[1]
    return {k: v.strip() for k, v in ents.items()}


def sample_replies(model, tok, prompts_rows: list[dict[str, Any]],
                   cfg: PreferenceConfig) -> list[list[Reply]]:
    """Each training prompt answered `samples_per_prompt` times (at least 2), seeded per sample."""
    convs = [r["messages"][:1] for r in prompts_rows]
    return generate_replies(model, tok, convs, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                            samples=max(2, cfg.samples_per_prompt))


def min_pairs(cfg: PreferenceConfig) -> int:
    return max(1, cfg.n_prompts // 10) if cfg.min_pairs is None else cfg.min_pairs


def run_preferences(cfg: PreferenceConfig, teacher_cfg: TeacherConfig, sft_checkpoint_dir: Path,
                    sft_dataset_dir: Path, tokenizer_dir: Path, out: Path, cache_dir: Path, *,
                    precision: str = "auto") -> StageResult:
    """Build the pairs (a launched teacher endpoint arrives as `teacher_cfg.base_url`);
    `precision` is the sampling's autocast (`inference_runtime`): "auto" is bf16 on a GPU.
    Raises TeacherBudgetError, publishing nothing, when judge or teacher replies fail too
    often, the request cap is spent, or fewer than the minimum pairs result."""
    from wikigpt_core.model_io import load_model
    from wikigpt_core.tokenizer import WikiTokenizer

    sft_dataset_dir = Path(sft_dataset_dir)
    rows = read_jsonl(sft_dataset_dir / "train.jsonl")
    n_fp = round(cfg.n_prompts * cfg.false_premise_fraction)
    n_sampled = cfg.n_prompts - n_fp
    rng = random.Random(cfg.seed)
    prompts_rows = rng.sample(rows, min(n_sampled, len(rows)))

    # The plan: both orders of every pair of samples per prompt, one request per false premise.
    n_samples = max(2, cfg.samples_per_prompt)
    planned = len(prompts_rows) * n_samples * (n_samples - 1) + n_fp
    client = make_client(teacher_cfg, cache_dir, max_requests=request_cap(teacher_cfg, planned))
    budget = FailureBudget("preference_dataset", teacher_cfg, client, asked=cfg.n_prompts, unit="pairs")
    judge, teacher = Judge(client, budget), Teacher(client)
    tok = WikiTokenizer.load(tokenizer_dir)
    rt = inference_runtime(precision)
    model = load_model(sft_checkpoint_dir, device=rt.device)

    t0 = time.perf_counter()
    with rt.autocast():
        samples = sample_replies(model, tok, prompts_rows, cfg)
    gen_seconds = time.perf_counter() - t0

    pairs: list[dict[str, Any]] = []
    drops: Counter[str] = Counter()
    margins: list[float] = []
    distinct = [len({x.text for x in replies}) >= 2 for replies in samples]
    drops["identical"] = distinct.count(False)
    todo = [k for k, d in enumerate(distinct) if d]
    ranked_all = judge_samples(
        judge, [prompts_rows[k]["messages"][0]["content"] for k in todo],
        [prompts_rows[k].get("answer") or prompts_rows[k]["messages"][1]["content"] for k in todo],
        [samples[k] for k in todo])
    for k, ranked in zip(todo, ranked_all):
        if ranked is None or abs(ranked[2]) < cfg.min_margin:
            drops["tie"] += 1
            continue
        best, worst, margin = ranked
        margins.append(margin)
        pairs.append({"prompt": prompts_rows[k]["messages"][:1], "chosen": samples[k][best].text,
                      "rejected": samples[k][worst].text, "kind": "sampled"})

    fps = make_false_premises(_entities(sft_dataset_dir, rows), n_fp, cfg.seed, exclude=gallery_prompts())
    written = teacher.write_false_premise([FalsePremiseSpec(f.question, f.reason, f.context) for f in fps])
    for fp, w in zip(fps, written):
        if isinstance(w, Failure) or not w["refusal"].strip() or not w["invented"].strip():
            drops["false_premise_failed"] += 1
            budget.reject(w if isinstance(w, Failure) else Failure("empty_contrast", json.dumps(w)))
            continue
        budget.accept()
        pairs.append({"prompt": [{"role": "user", "content": fp.question}],
                      "chosen": w["refusal"].strip(), "rejected": w["invented"].strip(),
                      "kind": "false_premise"})
    budget.check()
    budget.require(len(pairs), min_pairs(cfg), "preference.min_pairs")

    kinds = Counter(p["kind"] for p in pairs)
    config = {"preference": vars(cfg), "teacher": vars(teacher_cfg)}
    with ArtifactWriter(out, stage="preference_dataset", config=config) as w:
        with (w.dir / "pairs.jsonl").open("w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        w.stats.update({
            "pairs": len(pairs), "pairs_sampled": kinds.get("sampled", 0),
            "pairs_false_premise": kinds.get("false_premise", 0),
            "mean_judge_margin": round(sum(margins) / len(margins), 4) if margins else 0.0,
            "prompts_sampled": len(prompts_rows),
            "dropped_tie": drops["tie"], "dropped_identical": drops["identical"],
            "dropped_false_premise_failed": drops["false_premise_failed"],
            "generation_seconds": round(gen_seconds, 3), "generation_device": rt.device.type,
            "generation_autocast": autocast_label(rt),
            "sampled_stopped_rate": round(sum(x.stopped for s in samples for x in s) / max(1, sum(map(len, samples))), 4),
            "teacher_backend": teacher_cfg.backend, "teacher_model": client.model,
            **client.usage.as_stats(), **budget.stats(),
        })
        (w.dir / "README.md").write_text(_data_card(w.stats, cfg))
    return w.result


def _data_card(stats: dict[str, Any], cfg: PreferenceConfig) -> str:
    judge = who(stats["teacher_backend"], stats["teacher_model"])
    rules_note = ("\nNo model judged or wrote any pair: the judge's scores come from fixed rules "
                  "(grounding, agreement with the reference, stopping, length, repetition) and the "
                  "false-premise replies from templates.\n") if is_rule_system(stats["teacher_backend"]) else ""
    return f"""---
license: cc-by-sa-4.0
language:
- en
tags:
- dpo
- preference
- wikipedia
pretty_name: WikiGPT preference pairs
---

# WikiGPT preference pairs

`pairs.jsonl`: one pair per line, `{{"prompt": [messages ending with a user turn], "chosen": str,
"rejected": str, "kind": "sampled"|"false_premise"}}`.

- **sampled** ({stats['pairs_sampled']}): the SFT model answered {stats['prompts_sampled']} training prompts
  {max(2, cfg.samples_per_prompt)} times each (temperature {cfg.temperature}, top-p {cfg.top_p}); the judge,
  {judge}, compared the samples in both orders, and a pair was kept only when both
  orders agreed with a score gap of at least {cfg.min_margin} (mean gap {stats['mean_judge_margin']}).
  Dropped: {stats['dropped_tie']} ties, {stats['dropped_identical']} prompts with identical samples.
- **false_premise** ({stats['pairs_false_premise']}): questions that rest on a false premise; chosen
  names the false premise, rejected invents an answer. Both were written by {judge}.
{rules_note}
Derived from Wikipedia text (CC BY-SA 4.0); the same license applies.
"""

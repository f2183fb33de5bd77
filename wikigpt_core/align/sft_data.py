"""The `sft_dataset` stage: grounded QA, summarization and extraction examples from passages.

Plan: cut passages from the corpus, assign whole articles to train or held-out (no passage leaks
across the split), queue (task, passage, variant) specs round-robin across articles, ask the
teacher in batches, filter, and repeat until each task's quota of the configured mix is met or
the passages run out. Output: `train.jsonl`, `heldout.jsonl` (one chat example per line),
`passages.jsonl` (provenance of every passage used) and a `README.md` data card.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from wikigpt_core.align.passages import (PASSAGES_PER_ARTICLE_LIMIT, CorpusError, Passage, article_passages,
                                         read_corpus)
from wikigpt_core.align.teacher import ExampleSpec, Teacher, make_teacher
from wikigpt_core.artifacts import ArtifactWriter, StageResult
from wikigpt_core.config import SFTDataConfig, TeacherConfig
from wikigpt_core.data.language import artifact_language
from wikigpt_core.llm import text as T
from wikigpt_core.llm.budget import FailureBudget, request_cap
from wikigpt_core.llm.client import Failure
from wikigpt_core.llm.labels import is_rule_system, who
from wikigpt_core.llm.offline import extract_items

TASKS = ("qa", "summarize", "extract")
SUMMARY_INSTRUCTIONS = (
    "Summarize the following passage in one or two sentences.",
    'Give a short summary of this passage from the article "{title}".',
    "What is this passage about? Answer in at most two sentences.",
    "Write a one-sentence summary of the passage.",
)
EXTRACT_INSTRUCTIONS = (
    "List every year mentioned in the passage, in order of first appearance.",
    "Extract the names of people, places and organizations mentioned in the passage.",
    "List every number that appears in the passage, other than years.",
)
MAX_VARIANTS = 4  # distinct facts / instructions tried per (task, passage)


def user_message(task: str, title: str, passage: str, instruction: str = "", question: str = "") -> str:
    if task == "qa":
        return f'Answer the question using the passage from "{title}".\n\n{passage}\n\nQuestion: {question}'
    return f"{instruction}\n\n{passage}"


def instruction_for(task: str, variant: int, title: str) -> str:
    if task == "summarize":
        return SUMMARY_INSTRUCTIONS[variant % len(SUMMARY_INSTRUCTIONS)].format(title=title)
    if task == "extract":
        return EXTRACT_INSTRUCTIONS[variant % len(EXTRACT_INSTRUCTIONS)]
    return ""


def task_quotas(cfg: SFTDataConfig) -> dict[str, int]:
    unknown = set(cfg.mix) - set(TASKS)
    if unknown or not cfg.mix or any(v < 0 for v in cfg.mix.values()) or sum(cfg.mix.values()) <= 0:
        raise ValueError(f"sft_data.mix={cfg.mix!r} must give non-negative weights to {TASKS} only")
    total = sum(cfg.mix.values())
    quotas = {t: int(cfg.n_examples * cfg.mix.get(t, 0) / total) for t in TASKS}
    quotas[max(cfg.mix, key=cfg.mix.get)] += cfg.n_examples - sum(quotas.values())
    return quotas


def _spec_queue(task: str, passages: list[Passage], offset: int) -> Iterator[ExampleSpec]:
    """Round-robin over passages (already interleaved across articles), then next variant."""
    n = len(passages)
    for variant in range(MAX_VARIANTS):
        for i in range(n):
            p = passages[(i + offset) % n]
            # Summary/extraction variants rotate the instruction per passage, so one passage
            # is not summarized with the same wording twice.
            v = variant if task == "qa" else variant + p.passage_id
            instruction = instruction_for(task, v, p.title)
            if task == "extract" and not extract_items(p.text, instruction):
                continue  # nothing of that kind in the passage: do not spend a request on it
            yield ExampleSpec(task, p.title, p.text, v, instruction, p.passage_id)


DROP_REASONS = ("teacher_failed", "bad_reply", "empty", "length", "ungrounded", "language", "duplicate_prompt")


class _Filter:
    """Quality filters; each drop is counted under `dropped_<reason>` and, with a budget, in it
    (with the reply that was dropped, for the error message)."""

    def __init__(self, cfg: SFTDataConfig, budget: FailureBudget | None = None) -> None:
        self.cfg = cfg
        self.budget = budget
        self.drops: Counter[str] = Counter()
        self.seen_prompts: set[str] = set()

    def keep(self, spec: ExampleSpec, reply: dict[str, Any] | Failure | None) -> dict[str, Any] | None:
        if reply is None or isinstance(reply, Failure):
            failure = reply or Failure("request_failed")
            reason = "bad_reply" if failure.reason == "bad_reply" else "teacher_failed"
            return self._drop(reason, failure.detail)
        kept = self._check(spec, reply)
        if kept is not None and self.budget:
            self.budget.accept()
        return kept

    def _check(self, spec: ExampleSpec, reply: dict[str, Any]) -> dict[str, Any] | None:
        shown = json.dumps(reply, ensure_ascii=False)
        response = " ".join(reply["response"].split())
        if not response or (spec.task == "qa" and not reply["question"].strip()):
            return self._drop("empty", shown)
        n_words = len(response.split())
        if not self.cfg.min_response_words <= n_words <= self.cfg.max_response_words:
            return self._drop("length", shown)
        answer = reply.get("answer", "").strip() if spec.task == "qa" else ""
        if spec.task == "qa" and (not answer or answer.lower() not in spec.passage.lower()):
            return self._drop("ungrounded", shown)
        if T.grounding(response, spec.passage) < self.cfg.min_grounding:
            return self._drop("ungrounded", shown)
        # Lists (extraction) have no function words; prose responses must read as English.
        if spec.task != "extract" and n_words >= 8 and T.english_ratio(response) < self.cfg.min_english_ratio / 2:
            return self._drop("language", shown)
        prompt = user_message(spec.task, spec.title, spec.passage, spec.instruction, reply.get("question", ""))
        key = " ".join(prompt.lower().split())
        if key in self.seen_prompts:
            return self._drop("duplicate_prompt", shown)
        self.seen_prompts.add(key)
        return {"prompt": prompt, "response": response, "answer": answer or _list_answer(spec, reply)}

    def _drop(self, reason: str, detail: str = "") -> None:
        self.drops[reason] += 1
        if self.budget:
            self.budget.reject(Failure(reason, detail))
        return None


def _list_answer(spec: ExampleSpec, reply: dict[str, Any]) -> str:
    # Extraction: the items are the gold; summaries have no short gold answer.
    return "; ".join(str(i) for i in reply.get("items", [])) if spec.task == "extract" else ""


def _heldout_articles(article_ids: list[int], fraction: float, seed: int) -> set[int]:
    ranked = sorted(article_ids, key=lambda a: hashlib.sha1(f"{seed}:{a}".encode()).hexdigest())
    k = min(len(ranked) - 1, max(1, math.ceil(fraction * len(ranked)))) if fraction > 0 else 0
    return set(ranked[:k])


def _interleave(per_article: list[list[Passage]]) -> list[Passage]:
    out = []
    for k in range(max((len(p) for p in per_article), default=0)):
        out += [p[k] for p in per_article if k < len(p)]
    return out


def build_examples(cfg: SFTDataConfig, teacher: Teacher, passages: list[Passage], flt: _Filter,
                   batch: int = 256) -> list[dict[str, Any]]:
    """Examples meeting each task's quota (fewer if the passages run out). With a budget on the
    filter, it is checked after every batch and stops the build when it is exceeded."""
    quotas = task_quotas(cfg)
    examples: list[dict[str, Any]] = []
    for ti, task in enumerate(TASKS):
        if not quotas[task] or not passages:
            continue
        queue = _spec_queue(task, passages, offset=ti * len(passages) // len(TASKS))
        got = 0
        while got < quotas[task]:
            specs = [s for _, s in zip(range(min(batch, 8 + (quotas[task] - got) * 5 // 4)), queue)]
            if not specs:
                break
            for spec, reply in zip(specs, teacher.write_examples(specs)):
                kept = flt.keep(spec, reply)
                if kept is None or got >= quotas[task]:
                    continue
                examples.append({
                    "messages": [{"role": "user", "content": kept["prompt"]},
                                 {"role": "assistant", "content": kept["response"]}],
                    "task": task, "answer": kept["answer"], "passage_id": spec.passage_id,
                })
                got += 1
            if flt.budget:
                flt.budget.check()
    return examples


def min_examples(cfg: SFTDataConfig) -> int:
    return max(1, cfg.n_examples // 4) if cfg.min_examples is None else cfg.min_examples


def run_sft_data(cfg: SFTDataConfig, teacher_cfg: TeacherConfig, corpus_dir: Path, out: Path,
                 cache_dir: Path) -> StageResult:
    """Build the dataset with the teacher `teacher_cfg` names (a launched endpoint arrives as its
    `base_url`). Raises TeacherBudgetError, publishing nothing, when the teacher's replies fail or are
    rejected too often, the request cap is spent, or fewer than the minimum examples result."""
    articles = read_corpus(corpus_dir)
    language = artifact_language(Path(corpus_dir))  # the corpus language cleaning filtered for
    max_pp = min(cfg.max_passages_per_article, PASSAGES_PER_ARTICLE_LIMIT)
    per_article, dropped_lang = [], 0
    for a in sorted(articles, key=lambda a: hashlib.sha1(f"{cfg.seed}:{a['id']}".encode()).hexdigest()):
        ps, d = article_passages(a, cfg.passage_chars, max_pp, cfg.min_english_ratio, language)
        dropped_lang += d
        if ps:
            per_article.append(ps)
    passages = _interleave(per_article)
    if not passages:
        raise CorpusError(f"{Path(corpus_dir) / 'corpus.parquet'} has no usable passages ({len(articles)} "
                          "articles, none with clean English prose); check the cleaning stage's output")
    heldout_ids = _heldout_articles([ps[0].article_id for ps in per_article], cfg.heldout_fraction, cfg.seed)

    # One request per example is the plan; filters and failures may use up a few more.
    teacher = make_teacher(teacher_cfg, cache_dir, max_requests=request_cap(teacher_cfg, cfg.n_examples))
    budget = FailureBudget("sft_dataset", teacher_cfg, teacher.client, asked=cfg.n_examples)
    flt = _Filter(cfg, budget)
    examples = build_examples(cfg, teacher, passages, flt)
    budget.require(len(examples), min_examples(cfg), "sft_data.min_examples")
    random.Random(cfg.seed).shuffle(examples)  # built task by task; published mixed
    pid_article = {p.passage_id: p.article_id for p in passages}
    train = [e for e in examples if pid_article[e["passage_id"]] not in heldout_ids]
    heldout = [e for e in examples if pid_article[e["passage_id"]] in heldout_ids]
    used = {e["passage_id"] for e in examples}

    config = {"sft_data": vars(cfg), "teacher": {k: v for k, v in vars(teacher_cfg).items()}}
    with ArtifactWriter(out, stage="sft_dataset", config=config) as w:
        _write_jsonl(w.dir / "train.jsonl", train)
        _write_jsonl(w.dir / "heldout.jsonl", heldout)
        _write_jsonl(w.dir / "passages.jsonl", [p.to_json() for p in passages if p.passage_id in used])
        counts = Counter(e["task"] for e in examples)
        w.stats.update({
            "examples_requested": cfg.n_examples,
            "examples_train": len(train), "examples_heldout": len(heldout),
            **{f"examples_{t}": counts.get(t, 0) for t in TASKS},
            "articles_used": len({pid_article[i] for i in used}), "passages_used": len(used),
            "passages_available": len(passages), "passages_dropped_language": dropped_lang,
            **{f"dropped_{r}": flt.drops.get(r, 0) for r in DROP_REASONS},
            "teacher_backend": teacher_cfg.backend,
            "teacher_model": teacher.client.model,
            **teacher.usage.as_stats(),
            **budget.stats(),
        })
        (w.dir / "README.md").write_text(_data_card(cfg, w.stats, train[:1] or heldout[:1]))
    return w.result


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _data_card(cfg: SFTDataConfig, stats: dict[str, Any], sample: list[dict[str, Any]]) -> str:
    drops = "\n".join(f"| {k.removeprefix('dropped_')} | {v} |" for k, v in stats.items() if k.startswith("dropped_"))
    example = json.dumps(sample[0], ensure_ascii=False, indent=2) if sample else "(none)"
    rules_note = ("\nNo model wrote any of this data: the rules copy questions, answers, summaries and "
                  "lists out of the passages.") if is_rule_system(stats["teacher_backend"]) else ""
    return f"""---
license: cc-by-sa-4.0
language:
- en
task_categories:
- question-answering
- summarization
tags:
- wikipedia
- synthetic
- instruction-tuning
pretty_name: WikiGPT SFT data
---

# WikiGPT SFT data

Synthetic instruction data grounded in English Wikipedia passages: closed question answering,
summarization and extraction. Every prompt contains the passage it is about, so every answer can
be checked against it. Written by {who(stats['teacher_backend'], stats['teacher_model'])}.{rules_note}

## Files

- `train.jsonl`, `heldout.jsonl`: one example per line,
  `{{"messages": [{{"role": "user", ...}}, {{"role": "assistant", ...}}], "task": "qa"|"summarize"|"extract", "answer": str, "passage_id": int}}`.
  `answer` is the short gold answer of a QA example (the extracted items for extraction, empty for summaries).
- `passages.jsonl`: `passage_id`, `article_id`, `title`, `url`, `text` of every passage used.

The split is by article: no passage of a held-out article appears in train.

## Counts

| split / task | examples |
|---|---|
| train | {stats['examples_train']} |
| held-out | {stats['examples_heldout']} |
| qa | {stats['examples_qa']} |
| summarize | {stats['examples_summarize']} |
| extract | {stats['examples_extract']} |

Mix requested: {json.dumps(cfg.mix)}; {stats['articles_used']} articles, {stats['passages_used']} passages.

## Quality filters

Length ({cfg.min_response_words}-{cfg.max_response_words} response words), grounding (at least
{cfg.min_grounding:.0%} of the response's content words occur in the passage; a QA answer must
occur in it verbatim), language (English function-word share of passages and long responses),
and duplicate prompts removed.

| filter | dropped |
|---|---|
{drops}
| passage language | {stats['passages_dropped_language']} |

## Example

```json
{example}
```

## License

Text derived from Wikipedia, available under CC BY-SA 4.0; this dataset carries the same license.
"""

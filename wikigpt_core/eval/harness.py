"""The judge-free harness (docs/reference.md, "Evaluation") over held-out closed-QA replies.

Per reply: exact_match (normalized: lowercase, no articles, no punctuation, single spaces),
contains_answer (normalized gold inside the normalized reply), stopped (the model emitted
<|end|> within the new-token budget), length_ok (reply words <= 3x gold words), distinct3
(unique word trigrams / all word trigrams; 1.0 when the reply has fewer than three words).
"""
from __future__ import annotations

from dataclasses import dataclass

from wikigpt_core.llm.text import distinct3, normalize_answer  # noqa: F401  (part of this API)

METRICS = ("exact_match", "contains_answer", "stopped", "length_ok", "distinct3")


def exact_match(reply: str, gold: str) -> float:
    return float(normalize_answer(reply) == normalize_answer(gold))


def contains_answer(reply: str, gold: str) -> float:
    g = normalize_answer(gold)
    # Whole-word containment: "1850" is not found inside "18501".
    return float(bool(g) and f" {g} " in f" {normalize_answer(reply)} ")


def length_ok(reply: str, gold: str) -> float:
    return float(len(reply.split()) <= 3 * max(1, len(gold.split())))


@dataclass
class HarnessRecord:
    reply: str
    gold: str
    stopped: bool


def score_record(r: HarnessRecord) -> dict[str, float]:
    return {
        "exact_match": exact_match(r.reply, r.gold),
        "contains_answer": contains_answer(r.reply, r.gold),
        "stopped": float(r.stopped),
        "length_ok": length_ok(r.reply, r.gold),
        "distinct3": distinct3(r.reply),
    }


def score_harness(records: list[HarnessRecord]) -> dict[str, float]:
    """Mean of every metric over the records (all 0.0 for an empty list)."""
    if not records:
        return {m: 0.0 for m in METRICS}
    rows = [score_record(r) for r in records]
    return {m: round(sum(row[m] for row in rows) / len(rows), 4) for m in METRICS}

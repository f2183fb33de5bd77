"""Pairwise judge figures for the eval report.

The judging itself (both orders, disagreement = tie) is `wikigpt_core.llm.judge.judge_debiased`,
shared with the preference data; this module turns its outcomes into win/tie/loss rates.
"""
from __future__ import annotations

from wikigpt_core.llm.judge import PairCase, PairOutcome, judge_debiased

__all__ = ["PairCase", "PairOutcome", "judge_debiased", "win_tie_loss"]


def win_tie_loss(outcomes: list[PairOutcome]) -> dict[str, float | int]:
    """Rates over the judged pairs (errors excluded); n = pairs judged."""
    judged = [o for o in outcomes if o.outcome != "error"]
    n = len(judged)
    rate = lambda k: round(sum(o.outcome == k for o in judged) / n, 4) if n else 0.0  # noqa: E731
    return {"win": rate("win"), "tie": rate("tie"), "loss": rate("loss"), "n": n}

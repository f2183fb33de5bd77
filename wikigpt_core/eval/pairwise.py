"""Position-debiased pairwise judging.

Every pair is judged twice, candidate first and candidate second. Only when both verdicts name
the same response does it count as a win or loss; when they disagree (the judge followed the
position, not the content) or both are ties, it is a tie. A judge that always prefers
position A therefore produces nothing but ties.
"""
from __future__ import annotations

from dataclasses import dataclass

from wikigpt_core.align.teacher import Judge, JudgeItem


@dataclass(frozen=True)
class PairCase:
    question: str
    candidate: str
    baseline: str
    reference: str = ""


@dataclass(frozen=True)
class PairOutcome:
    outcome: str
    """win / tie / loss for the candidate, or error when a verdict could not be obtained."""
    margin: float
    """Candidate score minus baseline score, averaged over both orders."""
    consistent: bool
    """Both orders named the same winner (or both said tie)."""


def _preference(winner: str, candidate_slot: str) -> str:
    if winner == "tie":
        return "tie"
    return "candidate" if winner == candidate_slot else "baseline"


def judge_debiased(judge: Judge, cases: list[PairCase]) -> list[PairOutcome]:
    forward = [JudgeItem(c.question, c.candidate, c.baseline, c.reference) for c in cases]
    backward = [JudgeItem(c.question, c.baseline, c.candidate, c.reference) for c in cases]
    verdicts = judge.compare(forward + backward)  # one batch: full concurrency
    n = len(cases)
    out = []
    for v1, v2 in zip(verdicts[:n], verdicts[n:]):
        if v1 is None or v2 is None:
            out.append(PairOutcome("error", 0.0, False))
            continue
        p1, p2 = _preference(v1.winner, "A"), _preference(v2.winner, "B")
        margin = ((v1.score_a - v1.score_b) + (v2.score_b - v2.score_a)) / 2
        if p1 != p2:
            out.append(PairOutcome("tie", margin, False))
        else:
            outcome = {"candidate": "win", "baseline": "loss", "tie": "tie"}[p1]
            out.append(PairOutcome(outcome, margin, True))
    return out


def win_tie_loss(outcomes: list[PairOutcome]) -> dict[str, float | int]:
    """Rates over the judged pairs (errors excluded); n = pairs judged."""
    judged = [o for o in outcomes if o.outcome != "error"]
    n = len(judged)
    rate = lambda k: round(sum(o.outcome == k for o in judged) / n, 4) if n else 0.0  # noqa: E731
    return {"win": rate("win"), "tie": rate("tie"), "loss": rate("loss"), "n": n}

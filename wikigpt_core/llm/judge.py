"""The judge: scores two responses to one user message, and position-debiased pairwise judging.

Every pair is judged twice, candidate first and candidate second. Only when both verdicts name
the same response does it count as a win or loss; when they disagree (the judge followed the
position, not the content) or both are ties, it is a tie. A judge that always prefers
position A therefore produces nothing but ties. Used by preference data and by the eval.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wikigpt_core.llm import prompts
from wikigpt_core.llm.budget import FailureBudget
from wikigpt_core.llm.client import ChatClient, Failure, TeacherUsage, parse_reply
from wikigpt_core.llm.offline import CUT_MARK


def judge_text(reply) -> str:
    """What the judge sees of a generated reply (`.text`, `.stopped`): a reply that never
    emitted <|end|> is marked as cut off."""
    return reply.text if reply.stopped else f"{reply.text} {CUT_MARK}".strip()


@dataclass(frozen=True)
class JudgeItem:
    question: str
    """The user message the responses answer (passage included when there is one)."""
    response_a: str
    response_b: str
    reference: str = ""
    """A reference answer, when known (the gold answer of a held-out example)."""


@dataclass(frozen=True)
class Verdict:
    score_a: float
    score_b: float
    winner: str = field(init=False)

    def __post_init__(self) -> None:
        w = "A" if self.score_a > self.score_b else "B" if self.score_b > self.score_a else "tie"
        object.__setattr__(self, "winner", w)


class Judge:
    """Scores two responses in the order given (debiasing: `judge_debiased`). With a budget,
    every verdict is counted in it and the budget is checked after each batch."""

    def __init__(self, client: ChatClient, budget: FailureBudget | None = None) -> None:
        self.client = client
        self.budget = budget

    @property
    def usage(self) -> TeacherUsage:
        return self.client.usage

    def compare(self, items: list[JudgeItem]) -> list[Verdict | None]:
        reqs = [prompts.judge_request(i.question, i.response_a, i.response_b, i.reference) for i in items]
        results = self.client.complete_many(reqs, kinds=["judge"] * len(reqs))
        self.client.check_health(results, "judging")
        out: list[Verdict | None] = []
        for r in results:
            obj = parse_reply(r, "judge")
            if isinstance(obj, Failure):
                out.append(None)
                if self.budget:
                    self.budget.reject(obj)
                continue
            out.append(Verdict(obj["score_a"], obj["score_b"]))
            if self.budget:
                self.budget.accept()
        if self.budget:
            self.budget.check()
        return out


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

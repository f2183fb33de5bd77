"""Position-debiased pairwise judging."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wikigpt_core.eval.pairwise import PairCase, judge_debiased, win_tie_loss
from wikigpt_core.llm.backends import OfflineBackend
from wikigpt_core.llm.client import ChatClient, Completion, TeacherError
from wikigpt_core.llm.judge import Judge
from wikigpt_core.llm.prompts import parse_request


class AlwaysFirstBackend:
    """A judge with pure position bias: whatever it is shown, response A wins."""

    backend_id = "test:always-first"

    def complete(self, body):
        return Completion(json.dumps({"score_a": 9, "score_b": 2}), 10, 5)


class LongerWinsBackend:
    """A judge that reads the content: the longer response wins, wherever it stands."""

    backend_id = "test:longer-wins"

    def complete(self, body):
        _, sec = parse_request(body["messages"][-1]["content"])
        a, b = len(sec["Response A"]), len(sec["Response B"])
        return Completion(json.dumps({"score_a": 5 + (a > b), "score_b": 5 + (b > a)}))


class FlakyBackend:
    """Fails every request about question Q2; judges the rest by position (A wins)."""

    backend_id = "test:flaky"

    def complete(self, body):
        if "Q2" in body["messages"][-1]["content"]:
            raise TeacherError("judge could not answer")
        return Completion(json.dumps({"score_a": 9, "score_b": 2}))


def _judge(backend, tmp_path: Path | None = None) -> Judge:
    return Judge(ChatClient(backend, model="m", cache_dir=tmp_path, concurrency=2, max_retries=0))


CASES = [PairCase("Q1", "a long detailed answer", "short"),
         PairCase("Q2", "tiny", "a much longer answer here"),
         PairCase("Q3", "same", "same")]


def test_position_biased_judge_yields_only_ties():
    outcomes = judge_debiased(_judge(AlwaysFirstBackend()), CASES)
    assert [o.outcome for o in outcomes] == ["tie", "tie", "tie"]
    assert all(not o.consistent for o in outcomes)
    assert all(o.margin == 0 for o in outcomes)  # +7 in one order, -7 in the other
    assert win_tie_loss(outcomes) == {"win": 0.0, "tie": 1.0, "loss": 0.0, "n": 3}


def test_content_judge_gives_wins_and_losses_in_both_orders():
    outcomes = judge_debiased(_judge(LongerWinsBackend()), CASES)
    assert [o.outcome for o in outcomes] == ["win", "loss", "tie"]
    assert outcomes[0].margin == 1 and outcomes[1].margin == -1
    assert win_tie_loss(outcomes) == {"win": pytest.approx(1 / 3, abs=1e-4), "tie": pytest.approx(1 / 3, abs=1e-4),
                                      "loss": pytest.approx(1 / 3, abs=1e-4), "n": 3}


def test_offline_judge_is_position_symmetric():
    q = ("Answer the question using the passage. The tower was completed in 1889 for the World's "
         "Fair in Paris, and it was designed by the company of Gustave Eiffel, an engineer. " * 2
         + "Question: When was the tower completed?")
    cases = [PairCase(q, "1889.", "It was finished in 1066 by the Romans.", "1889"),
             PairCase(q, "1889 [cut off]", "1889.", "1889")]
    outcomes = judge_debiased(_judge(OfflineBackend()), cases)
    assert [o.outcome for o in outcomes] == ["win", "loss"]
    assert all(o.consistent for o in outcomes)


def test_judge_failures_are_errors_not_ties():
    outcomes = judge_debiased(_judge(FlakyBackend()), CASES)
    assert [o.outcome for o in outcomes] == ["tie", "error", "tie"]
    assert win_tie_loss(outcomes) == {"win": 0.0, "tie": 1.0, "loss": 0.0, "n": 2}


def test_a_judge_that_mostly_fails_raises():
    with pytest.raises(TeacherError, match="judging: 2 of 2 requests"):
        judge_debiased(_judge(FlakyBackend()), [CASES[1]])

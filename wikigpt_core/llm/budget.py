"""The failure budget of a stage that pays a teacher or judge.

A stage asks for N items (examples, pairs, verdicts). Every reply it gets ends as accepted or as
a failure with a reason (the request failed, the reply was not the JSON asked for, a quality
filter dropped it). The budget stops the stage with `TeacherBudgetError`

- when failures reach `teacher.min_failures` and make up more than `teacher.max_failure_share`
  of the replies so far;
- when the client's request cap (`teacher.max_requests_per_item` x the requests the stage
  planned) is spent;
- when the stage ends with fewer items than its configured minimum.

The error names the commonest reasons with an example of each, so a bad endpoint, a wrong model
name or a teacher too weak for the filters is visible at once, before it costs more. Raising
inside the stage means nothing is published (the artifact writer discards its temp dir).
"""
from __future__ import annotations

import math
from collections import Counter

from wikigpt_core.config import TeacherConfig
from wikigpt_core.llm.client import ChatClient, Failure, TeacherError

EXAMPLES_PER_REASON = 2
EXAMPLE_CHARS = 160


class TeacherBudgetError(TeacherError):
    """A teacher stage stopped by its failure budget; the message says why and what to check.
    `requests` (sent, retries included), `asked` and `requests_per_item` (requests per item
    asked for) say what the stage spent before it stopped."""

    requests: int = 0
    asked: int = 0
    requests_per_item: float = 0.0


def request_cap(cfg: TeacherConfig, planned: int) -> int:
    """Most requests a stage that planned `planned` requests may send (retries included)."""
    return max(1, math.ceil(cfg.max_requests_per_item * max(1, planned)))


class FailureBudget:
    def __init__(self, stage: str, cfg: TeacherConfig, client: ChatClient, *, asked: int,
                 unit: str = "examples") -> None:
        self.stage = stage
        self.max_share = cfg.max_failure_share
        self.min_failures = cfg.min_failures
        self.client = client
        self.asked = asked
        self.unit = unit
        self.accepted = 0
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    @property
    def failed(self) -> int:
        return sum(self.reasons.values())

    def accept(self, n: int = 1) -> None:
        self.accepted += n

    def reject(self, failure: Failure) -> None:
        self.reasons[failure.reason] += 1
        shown = self.examples.setdefault(failure.reason, [])
        if len(shown) < EXAMPLES_PER_REASON and failure.detail:
            shown.append(" ".join(failure.detail.split())[:EXAMPLE_CHARS])

    def check(self) -> None:
        """Raise when too many replies failed or the request cap is spent."""
        seen = self.accepted + self.failed
        if self.failed >= self.min_failures and seen and self.failed / seen > self.max_share:
            raise self._error(
                f"{self.failed} of {seen} teacher replies ({self.failed / seen:.0%}) failed or were "
                f"rejected, over the limit of {self.max_share:.0%} (teacher.max_failure_share, "
                f"checked once {self.min_failures} have failed: teacher.min_failures)")
        if self.client.cap_reached:
            raise self._error(
                f"the request cap of {self.client.max_requests} requests for {self.asked} {self.unit} "
                f"asked for is spent (teacher.max_requests_per_item) with {self.accepted} accepted")

    def require(self, got: int, minimum: int, setting: str) -> None:
        """Raise when the stage ends with fewer than `minimum` items."""
        if got < minimum:
            raise self._error(
                f"only {got} {self.unit} resulted, fewer than the minimum of {minimum} ({setting})")

    def stats(self, prefix: str = "teacher_") -> dict[str, float | int]:
        """Replies accepted and failed, and requests actually sent per accepted reply and per
        item asked for (the figure the budget error gives too, so success and trip compare)."""
        sent = self.client.usage.requests
        return {f"{prefix}replies_accepted": self.accepted, f"{prefix}replies_failed": self.failed,
                f"{prefix}requests_per_item": round(sent / max(1, self.accepted), 3),
                f"{prefix}requests_per_item_asked": round(sent / max(1, self.asked), 3)}

    def _error(self, why: str) -> TeacherBudgetError:
        err = TeacherBudgetError(self._message(why))
        err.requests, err.asked = self.client.usage.requests, self.asked
        err.requests_per_item = round(err.requests / max(1, self.asked), 3)
        return err

    def _message(self, why: str) -> str:
        u = self.client.usage
        per = f"{u.requests / max(1, self.asked):.2f} per {self.unit.removesuffix('s')} asked for"
        common = ", ".join(
            f"{reason} x{n}" + (f" (e.g. {' | '.join(repr(e) for e in self.examples[reason])})"
                                if self.examples.get(reason) else "")
            for reason, n in self.reasons.most_common(3)) or "none"
        return (f"{self.stage}: stopped by the teacher failure budget: {why}. Commonest failure "
                f"reasons: {common}. {u.requests} requests sent ({u.retries} retries, {u.cache_hits} "
                f"cache hits; {per}) to {self.client.backend.backend_id} for {self.asked} {self.unit} asked for. "
                "Nothing was published. Check teacher.base_url and teacher.model, or that the teacher "
                "is strong enough for the stage's filters.")

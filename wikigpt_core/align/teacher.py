"""The teacher: writes SFT examples and false-premise contrasts through the shared LLM client.

    wikigpt_core.llm   ChatClient (cache, retries, request cap, usage) over OfflineBackend |
                       OpenAIBackend; the request prompts; the failure budget
      ↑
    Teacher.write_examples / write_false_premise

A reply that cannot be parsed, or whose request failed, comes back as a `Failure` naming why
(the caller counts it as a drop and in its failure budget); a batch where most requests failed
raises TeacherError at once (the endpoint is down or misconfigured).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wikigpt_core.config import TeacherConfig
from wikigpt_core.llm import prompts
from wikigpt_core.llm.client import ChatClient, Failure, TeacherUsage, make_client, parse_reply


@dataclass(frozen=True)
class ExampleSpec:
    """One example to write: a task over a passage; `variant` selects a different fact/angle."""

    task: str
    title: str
    passage: str
    variant: int = 0
    instruction: str = ""
    passage_id: int = -1
    """Provenance only; not part of the request."""


@dataclass(frozen=True)
class FalsePremiseSpec:
    question: str
    reason: str
    context: str = ""


class Teacher:
    def __init__(self, client: ChatClient) -> None:
        self.client = client

    @property
    def usage(self) -> TeacherUsage:
        return self.client.usage

    def write_examples(self, specs: list[ExampleSpec]) -> list[dict[str, Any] | Failure]:
        reqs = [prompts.example_request(s.task, s.title, s.passage, s.variant, s.instruction) for s in specs]
        results = self.client.complete_many(reqs, seeds=[s.variant for s in specs], kinds=[s.task for s in specs])
        self.client.check_health(results, "writing examples")
        return [parse_reply(r, s.task) for s, r in zip(specs, results)]

    def write_false_premise(self, specs: list[FalsePremiseSpec]) -> list[dict[str, Any] | Failure]:
        reqs = [prompts.false_premise_request(s.question, s.reason, s.context) for s in specs]
        results = self.client.complete_many(reqs, kinds=["false_premise"] * len(reqs))
        self.client.check_health(results, "writing false-premise contrasts")
        return [parse_reply(r, "false_premise") for r in results]


def make_teacher(cfg: TeacherConfig, cache_dir: Path | None, *, max_requests: int | None = None) -> Teacher:
    return Teacher(make_client(cfg, cache_dir, max_requests=max_requests))

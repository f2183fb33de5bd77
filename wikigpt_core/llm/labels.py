"""Plain-words provenance of teacher- and judge-made data, for data cards, reports and the model
card: a rule system is never presented as a model."""
from __future__ import annotations

RULES_BACKEND = "offline"


def is_rule_system(backend: str | None) -> bool:
    return backend == RULES_BACKEND


def who(backend: str | None, model: str | None) -> str:
    """Who wrote or judged something, e.g. for "written by {who(...)}"."""
    if is_rule_system(backend):
        return (f"the built-in offline rule system `{model or 'wikigpt-offline-rules-v1'}`: "
                "deterministic rules, not a language model")
    if backend is None and model is None:
        return "an unrecorded teacher"
    return f"the language model `{model}` (served over an OpenAI-compatible endpoint)"

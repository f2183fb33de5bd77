"""False-premise questions built from corpus entities, each with the reason it is false.

Every template is false by construction whatever entity fills it (no Nobel Prize in
Mathematics exists; there was no FIFA World Cup before 1930 or in 1942/1946; no one has
walked on Mars; ...), so the refusal the teacher writes can state the reason with certainty.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources

from wikigpt_core.llm import text as T

_YEAR = re.compile(r"\b(1[0-8][0-9]{2})\b")


def gallery_prompts() -> set[str]:
    """The evaluation gallery's prompts (a package resource the eval reads too), which
    preference data must never train on."""
    raw = resources.files("wikigpt_core").joinpath("resources", "gallery_prompts.json").read_text("utf-8")
    return {p["prompt"] for p in json.loads(raw)["prompts"]}


WORLD_CUP_REASON = ("the first FIFA World Cup was held in 1930, and none was held in 1942 or 1946, "
                    "so there was no {year} World Cup")

# (question template, reason template, needs a person)
TEMPLATES: tuple[tuple[str, str, bool], ...] = (
    ("What did {name} say when {pron} landed on the Moon?",
     "{name} never went to the Moon; the only people to walk on it were twelve Apollo astronauts, "
     "between 1969 and 1972", True),
    ("In what year did {name} win the Nobel Prize in Mathematics?",
     "there is no Nobel Prize in Mathematics, so {name} cannot have won one", False),
    ("Who won the {year} FIFA World Cup?", WORLD_CUP_REASON, False),
    ("What did {name} post on social media in {year}?",
     "social media did not exist in {year}; it appeared only in the late 20th century", True),
    ("Which astronaut first walked on Mars, and what did they say about {name}?",
     "no astronaut has ever walked on Mars; no crewed mission has gone there", False),
    ("Which Olympic gold medal did {name} win in {year}?",
     "the modern Olympic Games began in 1896, so no Olympic medal was awarded in {year}", True),
    ("How did {name} use the internet in {year}?",
     "the internet did not exist in {year}; it was developed in the second half of the 20th century", True),
)


@dataclass(frozen=True)
class FalsePremise:
    question: str
    reason: str
    context: str
    """Material the teacher may draw on for the invented (rejected) reply."""


def looks_like_person(title: str, text: str) -> bool:
    ws = title.split()
    pronouns = len(re.findall(r"\b(?:he|his|him|she|her)\b", text, re.I))
    return 2 <= len(ws) <= 4 and all(w[:1].isupper() for w in ws) and pronouns >= 2


def pronoun(text: str) -> str:
    he = len(re.findall(r"\b(?:he|his|him)\b", text, re.I))
    she = len(re.findall(r"\b(?:she|her)\b", text, re.I))
    return "she" if she > he else "he"


def _year_for(template: str, years: list[int], rng: random.Random) -> int:
    pool = [y for y in years if y < (1896 if "Olympic" in template else 1930 if "World Cup" in template else 1900)]
    return rng.choice(pool) if pool else rng.choice([1850, 1862, 1875, 1888])


def make_false_premises(entities: dict[str, str], n: int, seed: int,
                        exclude: set[str] = frozenset()) -> list[FalsePremise]:
    """Up to `n` distinct false-premise questions over `entities` ({title: some text about it}).
    Questions in `exclude` (e.g. the evaluation gallery) are never produced."""
    rng = random.Random(seed)
    titles = sorted(entities)
    rng.shuffle(titles)
    years = sorted({int(y) for t in titles for y in _YEAR.findall(entities[t])})
    out: list[FalsePremise] = []
    seen = set(q.lower() for q in exclude)
    for round_ in range(len(TEMPLATES)):
        for i, title in enumerate(titles):
            if len(out) >= n:
                return out
            qt, rt, person_only = TEMPLATES[(i + round_) % len(TEMPLATES)]
            text = entities[title]
            if person_only and not looks_like_person(title, text):
                continue
            year = _year_for(qt, years, rng)
            fill = {"name": title, "pron": pronoun(text), "year": year}
            q = qt.format(**fill)
            if q.lower() in seen:
                continue
            seen.add(q.lower())
            sents = [s for s in T.sentences(text) if 6 <= len(s.split()) <= 30]
            other = titles[(i + 1) % len(titles)]
            context = f"Name: {other}\nYear: {year}" + (f"\nSentence: {rng.choice(sents)}" if sents else "")
            out.append(FalsePremise(q, rt.format(**fill), context))
    return out

"""Passages: runs of clean, whole sentences cut from corpus articles, the teacher's input."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

from wikigpt_core.llm import text as T

CORPUS_COLUMNS = ("id", "title", "url", "text")
_MARKUP = re.compile(r"[|{}=<>\[\]]|\bpx\b|\bthumb\b")
PASSAGES_PER_ARTICLE_LIMIT = 1_000  # passage_id = article_id * limit + index in article


@dataclass(frozen=True)
class Passage:
    passage_id: int
    article_id: int
    title: str
    url: str
    text: str

    def to_json(self) -> dict:
        return asdict(self)


class CorpusError(ValueError):
    """The corpus file is missing, unreadable or lacks the expected columns."""


def read_corpus(corpus_dir: Path) -> list[dict]:
    path = Path(corpus_dir) / "corpus.parquet"
    if not path.exists():
        raise CorpusError(f"{path} does not exist; materialize the `deduped_corpus` asset first")
    try:
        table = pq.read_table(path, columns=list(CORPUS_COLUMNS))
    except Exception as e:  # pyarrow raises several types for bad files / missing columns
        raise CorpusError(f"{path} is not a corpus parquet with columns {CORPUS_COLUMNS}: {e}") from None
    return table.to_pylist()


def clean_sentence(s: str) -> bool:
    """A sentence worth showing the teacher: prose, not a caption, table row or citation."""
    ws = s.split()
    return (4 <= len(ws) <= 60 and s[0].isupper() | s[0].isdigit() | (s[0] in "\"'(")
            and s[-1] in ".!?\"')" and not _MARKUP.search(s) and " pp." not in s)


def article_passages(article: dict, passage_chars: int, max_passages: int,
                     min_english_ratio: float, language: str = "en") -> tuple[list[Passage], int]:
    """Pack consecutive clean sentences into passages of up to `passage_chars` characters.
    A sentence that fails `clean_sentence` ends the current passage (keeps passages coherent).
    `language` is the corpus language (`wikigpt_core.data.language.artifact_language`): English
    passages keep the function-word test, others need py3langid's probability >= 0.5.
    Returns (passages, dropped_for_language)."""
    out: list[Passage] = []
    dropped_language = 0
    current: list[str] = []

    def flush() -> None:
        nonlocal dropped_language
        text = " ".join(current)
        current.clear()
        if len(text) < passage_chars // 3 or len(out) >= max_passages:
            return
        if not _in_language(text, language, min_english_ratio):
            dropped_language += 1
            return
        pid = int(article["id"]) * PASSAGES_PER_ARTICLE_LIMIT + len(out)
        out.append(Passage(pid, int(article["id"]), article["title"], article["url"], text))

    for s in T.sentences(article["text"]):
        if not clean_sentence(s):
            flush()
            continue
        if current and len(" ".join(current)) + 1 + len(s) > passage_chars:
            flush()
        if len(s) <= passage_chars:
            current.append(s)
    flush()
    return out, dropped_language


def _in_language(text: str, language: str, min_english_ratio: float) -> bool:
    if language == "en":
        return T.english_ratio(text) >= min_english_ratio
    from wikigpt_core.data.language import language_probability

    return language_probability(text, language) >= 0.5

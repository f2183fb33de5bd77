"""Wikitext → plain text, plus the page-level facts the filters need.

Library choice (measured on the gensim enwiki sample, 106 articles, 5.7 MB of wikitext, one
core): wikiextractor's `Extractor.clean_text` ran at ~7.2 MB/s, mwparserfromhell's
`parse(...).strip_code()` at ~1.0 MB/s. wikiextractor also drops tables, image captions
("thumb|200px|...") and gallery residue that strip_code leaves in the text. Both are well kept;
we use wikiextractor's extractor (templates are not expanded: the dump has no template pages
to expand from, and dropping transclusions is what wikiextractor does with `--no-templates`).
`benchmarks/data_pipeline.py` re-measures our whole extraction against the wikiextractor CLI.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from wikiextractor.extract import Extractor

from wikigpt_core.data.xmlpages import RawPage

logging.getLogger("wikiextractor").setLevel(logging.ERROR)

# Templates that mark a disambiguation page ({{disambiguation}}, {{dab}}, {{hndis}}, ...).
_DISAMBIG = re.compile(
    r"\{\{\s*(?:disambig(?:uation)?|disamb|dab|hndis|geodis|numberdis|[\w \-]*disambiguation)\s*(?:\||\}\})",
    re.IGNORECASE,
)
# Stub templates: {{stub}}, {{Physics-stub}}, {{US-politician-stub|...}}.
_STUB = re.compile(r"\{\{\s*(?:[\w \-]*-)?stub\s*(?:\||\}\})", re.IGNORECASE)
_LIST_TITLE = re.compile(r"^(?:Lists? of|Index of|Outline of|Glossary of)\b")


@dataclass(slots=True)
class Article:
    """An extracted namespace-0 article and the wikitext facts filters look at."""

    id: int
    title: str
    text: str
    is_stub: bool
    list_line_ratio: float
    """Share of non-empty wikitext lines that are list items (start with * or #)."""

    @property
    def url(self) -> str:
        return article_url(self.title)


def article_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + title.replace(" ", "_")


def skip_reason(page: RawPage) -> str | None:
    """Why a page is not an article at all (None if it is one)."""
    if page.ns != 0:
        return "namespace"
    if page.redirect:
        return "redirect"
    if page.title.endswith("(disambiguation)") or _DISAMBIG.search(page.text):
        return "disambiguation"
    return None


def _list_line_ratio(wikitext: str) -> float:
    lines = [ln for ln in wikitext.splitlines() if ln.strip()]
    if not lines:
        return 0.0
    return sum(1 for ln in lines if ln[0] in "*#") / len(lines)


def wikitext_to_text(page_id: int, title: str, wikitext: str) -> str:
    """Plain text of an article: paragraphs and section titles, one per line."""
    extractor = Extractor(page_id, 0, "", title, [])
    paragraphs = extractor.clean_text(wikitext, expand_templates=False, html_safe=False)
    return "\n".join(p.strip() for p in paragraphs if p.strip())


def article_facts(page: RawPage) -> Article:
    """The article's wikitext facts, text not yet extracted (filters on these run first, so
    list and stub pages never pay for extraction)."""
    return Article(
        id=page.id,
        title=page.title,
        text="",
        is_stub=bool(_STUB.search(page.text)),
        list_line_ratio=_list_line_ratio(page.text),
    )


def extract_article(page: RawPage, facts: Article | None = None) -> Article:
    article = facts or article_facts(page)
    article.text = wikitext_to_text(page.id, page.title, page.text)
    return article


def is_list_title(title: str) -> bool:
    return bool(_LIST_TITLE.match(title))

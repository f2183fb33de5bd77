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

import functools
import logging
import re
from dataclasses import dataclass

from wikiextractor.extract import Extractor

from wikigpt_core.data.xmlpages import RawPage

logging.getLogger("wikiextractor").setLevel(logging.ERROR)

DEFAULT_URL_BASE = "https://en.wikipedia.org/wiki/"

# Wiki conventions that mark disambiguation, list and stub pages. The English ones apply on
# every wiki (many wikis reuse enwiki's templates); a few large wikis add their own. On other
# wikis only the English conventions and the language-independent list-line ratio apply.
_DISAMBIG_TEMPLATES = {
    "de": ("Begriffsklärung",), "fr": ("Homonymie",), "es": ("Desambiguación",),
    "it": ("Disambigua",), "bg": ("Пояснение",), "ru": ("Неоднозначность", "Многозначность"),
}
_DISAMBIG_TITLES = {
    "en": "(disambiguation)", "de": "(Begriffsklärung)", "fr": "(homonymie)",
    "es": "(desambiguación)", "it": "(disambigua)", "bg": "(пояснение)", "ru": "(значения)",
}
_LIST_TITLES = {
    "en": ("Lists? of", "Index of", "Outline of", "Glossary of"),
    "de": ("Liste (?:der|des|von)",), "fr": ("Liste (?:des|de|du|d')",), "es": ("Anexo:",),
    "it": ("Lista (?:di|dei|delle)",), "bg": ("Списък (?:на|с)",), "ru": ("Список",),
}
_STUB_TEMPLATES = {"fr": ("Ébauche",), "es": ("Esbozo",), "it": ("S",), "bg": ("Мъниче",),
                   "ru": ("Заготовка статьи",)}


@dataclass(frozen=True)
class WikiConventions:
    """Compiled page-kind patterns for one target language (see the tables above)."""

    disambig: re.Pattern
    disambig_titles: tuple[str, ...]
    list_title: re.Pattern
    stub: re.Pattern


@functools.cache
def conventions(language: str = "en") -> WikiConventions:
    names = "|".join(re.escape(t) for t in _DISAMBIG_TEMPLATES.get(language, ()))
    disambig = (r"\{\{\s*(?:disambig(?:uation)?|disamb|dab|hndis|geodis|numberdis|[\w \-]*disambiguation"
                + (f"|{names}" if names else "") + r")\s*(?:\||\}\})")
    lists = _LIST_TITLES["en"] + (_LIST_TITLES.get(language, ()) if language != "en" else ())
    stubs = "|".join(re.escape(t) for t in _STUB_TEMPLATES.get(language, ()))
    # {{stub}}, {{Physics-stub}}, {{US-politician-stub|...}} (+ the wiki's own stub templates)
    stub = r"\{\{\s*(?:(?:[\w \-]*-)?stub" + (f"|(?:{stubs})" if stubs else "") + r")\s*(?:\||\}\})"
    titles = tuple(dict.fromkeys((_DISAMBIG_TITLES["en"], _DISAMBIG_TITLES.get(language, "(disambiguation)"))))
    return WikiConventions(
        disambig=re.compile(disambig, re.IGNORECASE),
        disambig_titles=titles,
        list_title=re.compile(r"^(?:" + "|".join(lists) + r")(?:\b|\s)"),
        stub=re.compile(stub, re.IGNORECASE),
    )


@dataclass(slots=True)
class Article:
    """An extracted namespace-0 article and the wikitext facts filters look at."""

    id: int
    title: str
    text: str
    is_stub: bool
    list_line_ratio: float
    """Share of non-empty wikitext lines that are list items (start with * or #)."""
    url_base: str = DEFAULT_URL_BASE
    """The wiki's article URL prefix (from the dump's <siteinfo><base>)."""

    @property
    def url(self) -> str:
        return article_url(self.title, self.url_base)


def article_url(title: str, url_base: str = DEFAULT_URL_BASE) -> str:
    return (url_base or DEFAULT_URL_BASE) + title.replace(" ", "_")


def skip_reason(page: RawPage, language: str = "en") -> str | None:
    """Why a page is not an article at all (None if it is one)."""
    if page.ns != 0:
        return "namespace"
    if page.redirect:
        return "redirect"
    conv = conventions(language)
    if page.title.endswith(conv.disambig_titles) or conv.disambig.search(page.text):
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


def article_facts(page: RawPage, language: str = "en", url_base: str = DEFAULT_URL_BASE) -> Article:
    """The article's wikitext facts, text not yet extracted (filters on these run first, so
    list and stub pages never pay for extraction)."""
    return Article(
        id=page.id,
        title=page.title,
        text="",
        is_stub=bool(conventions(language).stub.search(page.text)),
        list_line_ratio=_list_line_ratio(page.text),
        url_base=url_base,
    )


def extract_article(page: RawPage, facts: Article | None = None) -> Article:
    article = facts or article_facts(page)
    article.text = wikitext_to_text(page.id, page.title, page.text)
    return article


def is_list_title(title: str, language: str = "en") -> bool:
    return bool(conventions(language).list_title.match(title))

"""Article filters. Each drops with one named reason; an article is counted under the first
filter (in `FILTERS` order) that drops it, so the counts add up to the articles removed.

| reason | drops an article when |
|---|---|
| `list_or_stub` | the title starts with "List of"/"Lists of"/"Index of"/"Outline of"/"Glossary of", the wikitext carries a `{{...-stub}}` template, or more than `max_list_ratio` of its wikitext lines are list items (checked on the wikitext, before extraction, so these pages cost no extraction time) |
| `too_short` | plain text has fewer than `min_chars` characters |
| `not_english` | fewer than `min_english_ratio` of the words in its first 5,000 characters are common English function words (a documented heuristic: English articles in the sample score 0.32-0.49; French, German and Spanish prose score below 0.1) |
| `leftover_markup` | markup characters `{}[]<>|=` are more than `max_markup_ratio` of the text, or a wiki table row (`{|`, `|-`, `|}`) survived extraction |

Redirects, other namespaces and disambiguation pages are skipped before extraction and
counted as `redirect`, `namespace` and `disambiguation`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from wikigpt_core.data.extract import Article, is_list_title

if TYPE_CHECKING:  # workers must not import config (it pulls in torch)
    from wikigpt_core.config import CleanConfig

# Common English function words: frequent in any English prose, rare elsewhere.
ENGLISH_STOPWORDS = frozenset(
    """a about after all also an and any are as at be been but by can could did do does for
    from had has have he her his how i if in into is it its may more most no not of on one
    only or other our out over she should so some such than that the their them then there
    these they this those through to under up was we were what when where which while who will
    with would you""".split()
)
_WORD = re.compile(r"[^\W\d_]+")
_MARKUP = re.compile(r"[{}\[\]<>|=]")
_TABLE_ROW = re.compile(r"^\s*(?:\{\||\|-|\|\})", re.MULTILINE)

SKIP_REASONS = ("namespace", "redirect", "disambiguation")


def english_ratio(text: str, prefix_chars: int = 5_000) -> float:
    """Share of stopwords among the words of the text's first `prefix_chars` characters (a
    prefix is enough to tell the language and keeps the cost flat for long articles)."""
    words = _WORD.findall(text[:prefix_chars].lower())
    if not words:
        return 0.0
    return sum(1 for w in words if w in ENGLISH_STOPWORDS) / len(words)


def markup_ratio(text: str) -> float:
    return len(_MARKUP.findall(text)) / max(1, len(text))


def too_short(a: Article, cfg: CleanConfig) -> bool:
    return len(a.text) < cfg.min_chars


def not_english(a: Article, cfg: CleanConfig) -> bool:
    return english_ratio(a.text) < cfg.min_english_ratio


def list_or_stub(a: Article, cfg: CleanConfig) -> bool:
    return is_list_title(a.title) or a.is_stub or a.list_line_ratio > cfg.max_list_ratio


def leftover_markup(a: Article, cfg: CleanConfig) -> bool:
    return markup_ratio(a.text) > cfg.max_markup_ratio or bool(_TABLE_ROW.search(a.text))


WIKITEXT_FILTERS: tuple[tuple[str, Callable[[Article, CleanConfig], bool]], ...] = (
    ("list_or_stub", list_or_stub),
)
TEXT_FILTERS: tuple[tuple[str, Callable[[Article, CleanConfig], bool]], ...] = (
    ("too_short", too_short),
    ("not_english", not_english),
    ("leftover_markup", leftover_markup),
)
FILTERS = WIKITEXT_FILTERS + TEXT_FILTERS
FILTER_REASONS = tuple(name for name, _ in FILTERS)
ALL_REASONS = SKIP_REASONS + FILTER_REASONS


def wikitext_drop_reason(a: Article, cfg: CleanConfig) -> str | None:
    """The first wikitext-only filter that drops the article (before extraction)."""
    for name, drops in WIKITEXT_FILTERS:
        if drops(a, cfg):
            return name
    return None


def drop_reason(a: Article, cfg: CleanConfig) -> str | None:
    """The first filter that drops the article, or None to keep it."""
    for name, drops in FILTERS:
        if drops(a, cfg):
            return name
    return None

"""Article filters. Each drops with one named reason; an article is counted under the first
filter (in `FILTERS` order) that drops it, so the counts add up to the articles removed.

| reason | drops an article when |
|---|---|
| `list_or_stub` | the title starts like a list page ("List of"/"Lists of"/"Index of"/"Outline of"/"Glossary of", plus the target wiki's own, e.g. "Liste der", "Списък на"), the wikitext carries a stub template (`{{...-stub}}`, plus e.g. `{{Ébauche}}`, `{{Мъниче}}`), or more than `max_list_ratio` of its wikitext lines are list items (checked on the wikitext, before extraction, so these pages cost no extraction time) |
| `too_short` | plain text has fewer than `min_chars` characters |
| `wrong_language` | py3langid gives the target language a probability below `min_language_prob` on the text's first 1,000 characters (English articles of the enwiki sample score above 0.99; see `wikigpt_core.data.language`) |
| `leftover_markup` | markup characters `{}[]<>|=` are more than `max_markup_ratio` of the text, or a wiki table row (`{|`, `|-`, `|}`) survived extraction |

Redirects, other namespaces and disambiguation pages are skipped before extraction and
counted as `redirect`, `namespace` and `disambiguation`.

Which wiki conventions (list titles, stub and disambiguation templates) exist per language is
in `wikigpt_core.data.extract`; `too_short`, `leftover_markup` and the list-line ratio do not
depend on the language.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from wikigpt_core.data.extract import Article, is_list_title
from wikigpt_core.data.language import language_probability

if TYPE_CHECKING:  # annotation only: a worker gets the filter fields as a SimpleNamespace
    # (data/parts.py), never a CleanConfig
    from wikigpt_core.config import CleanConfig

_MARKUP = re.compile(r"[{}\[\]<>|=]")
_TABLE_ROW = re.compile(r"^\s*(?:\{\||\|-|\|\})", re.MULTILINE)

SKIP_REASONS = ("namespace", "redirect", "disambiguation")


def markup_ratio(text: str) -> float:
    return len(_MARKUP.findall(text)) / max(1, len(text))


def too_short(a: Article, cfg: CleanConfig) -> bool:
    return len(a.text) < cfg.min_chars


def wrong_language(a: Article, cfg: CleanConfig) -> bool:
    # cfg.language is the resolved target (run_clean fills it in from the dump when unset)
    if cfg.min_language_prob <= 0:
        return False
    return language_probability(a.text, cfg.language) < cfg.min_language_prob


def list_or_stub(a: Article, cfg: CleanConfig) -> bool:
    return (is_list_title(a.title, cfg.language) or a.is_stub
            or a.list_line_ratio > cfg.max_list_ratio)


def leftover_markup(a: Article, cfg: CleanConfig) -> bool:
    return markup_ratio(a.text) > cfg.max_markup_ratio or bool(_TABLE_ROW.search(a.text))


WIKITEXT_FILTERS: tuple[tuple[str, Callable[[Article, CleanConfig], bool]], ...] = (
    ("list_or_stub", list_or_stub),
)
TEXT_FILTERS: tuple[tuple[str, Callable[[Article, CleanConfig], bool]], ...] = (
    ("too_short", too_short),
    ("wrong_language", wrong_language),
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

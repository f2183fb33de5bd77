"""Each documented filter drops what it should, and extraction skips non-articles."""
from __future__ import annotations

from wikigpt_core.data.extract import extract_article, skip_reason
import dataclasses

from wikigpt_core.data.filters import FILTER_REASONS, drop_reason
from wikigpt_core.data.language import language_probability
from wikigpt_core.data.xmlpages import RawPage

PROSE = (
    "The river is the longest in the region and has been used for trade since the early "
    "medieval period. It was an important route for merchants who carried grain and timber "
    "from the hills to the coast, and many of the towns along its banks were founded at "
    "places where it could be crossed. "
) * 4


def _page(text: str, title: str = "River", ns: int = 0, redirect: bool = False, pid: int = 1) -> RawPage:
    return RawPage(id=pid, ns=ns, title=title, redirect=redirect, text=text)


def _reason(settings, text: str, title: str = "River", language: str = "en"):
    page = _page(text, title)
    cfg = dataclasses.replace(settings.clean, language=language)
    return skip_reason(page, language) or drop_reason(extract_article(page), cfg)


def test_keeps_english_prose(settings):
    assert _reason(settings, "'''River''' [[water|flows]].\n\n" + PROSE) is None


def test_skips(settings):
    assert skip_reason(_page(PROSE, ns=1)) == "namespace"
    assert skip_reason(_page("#REDIRECT [[Sea]]", redirect=True)) == "redirect"
    assert skip_reason(_page("'''Mercury''' may refer to:\n* a planet\n{{disambiguation}}")) == "disambiguation"
    assert skip_reason(_page(PROSE, title="Mercury (disambiguation)")) == "disambiguation"
    assert skip_reason(_page(PROSE + "{{Hndis|Smith, John}}")) == "disambiguation"


def test_too_short(settings):
    assert _reason(settings, "A short river.") == "too_short"


GERMAN = ("Der Fluss ist der längste in der Region und wird seit dem frühen Mittelalter für den "
          "Handel genutzt. Er war eine wichtige Route für Kaufleute, die Getreide und Holz von "
          "den Hügeln zur Küste brachten. ") * 5


def test_wrong_language_follows_the_target(settings):
    assert language_probability(GERMAN, "en") < 0.1 < 0.9 < language_probability(PROSE, "en")
    assert language_probability(GERMAN, "de") > 0.9
    assert _reason(settings, GERMAN) == "wrong_language"
    assert _reason(settings, GERMAN, language="de") is None
    assert _reason(settings, PROSE, language="de") == "wrong_language"


def test_language_check_can_be_switched_off(settings):
    page = _page(GERMAN)
    cfg = dataclasses.replace(settings.clean, language="en", min_language_prob=0.0)
    assert drop_reason(extract_article(page), cfg) is None


def test_wiki_conventions_follow_the_language(settings):
    assert skip_reason(_page(GERMAN, title="Merkur (Begriffsklärung)"), "de") == "disambiguation"
    assert skip_reason(_page(GERMAN + "{{Begriffsklärung}}"), "de") == "disambiguation"
    assert skip_reason(_page(GERMAN + "{{Begriffsklärung}}"), "en") is None
    assert _reason(settings, GERMAN, title="Liste der Flüsse", language="de") == "list_or_stub"
    assert _reason(settings, GERMAN, title="Liste der Flüsse", language="en") == "wrong_language"


def test_list_and_stub(settings):
    assert _reason(settings, PROSE, title="List of rivers") == "list_or_stub"
    assert _reason(settings, PROSE + "\n{{river-stub}}") == "list_or_stub"
    items = "\n".join(f"* [[River {i}]] flows into the sea near the town of {i}" for i in range(40))
    assert _reason(settings, PROSE + "\n" + items) == "list_or_stub"  # 40 of 41 lines are items


def test_leftover_markup(settings):
    # Markup wikiextractor does not remove (an unclosed template swallowed as text).
    residue = PROSE + " {{{{ ]] [[ == | = | = | ]] <ref> " * 20
    assert _reason(settings, residue) == "leftover_markup"


def test_reasons_are_documented():
    import wikigpt_core.data.filters as f
    for reason in FILTER_REASONS:
        assert f"`{reason}`" in f.__doc__

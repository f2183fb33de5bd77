"""Every judge-free harness metric (docs/reference.md, "Evaluation") on hand-made examples."""
from __future__ import annotations

import pytest

from wikigpt_core.eval.harness import (HarnessRecord, contains_answer, distinct3, exact_match,
                                       length_ok, normalize_answer, score_harness)


@pytest.mark.parametrize("text, norm", [
    ("The Eiffel Tower.", "eiffel tower"),
    ("  An   apple, a day!", "apple day"),
    ("Gustave EIFFEL", "gustave eiffel"),
    ("theory of the mind", "theory of mind"),  # articles go, other words stay
    ("1889.", "1889"),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


@pytest.mark.parametrize("reply, gold, em", [
    ("1889.", "1889", 1.0),
    ("The Eiffel Tower", "eiffel tower", 1.0),
    ("It was 1889.", "1889", 0.0),
    ("1888", "1889", 0.0),
    ("", "1889", 0.0),
])
def test_exact_match(reply, gold, em):
    assert exact_match(reply, gold) == em


@pytest.mark.parametrize("reply, gold, hit", [
    ("It was completed in 1889 for the fair.", "1889", 1.0),
    ("Designed by Gustave Eiffel's company.", "Gustave Eiffel", 1.0),
    ("It was completed in 18890.", "1889", 0.0),  # whole words only
    ("Paris", "1889", 0.0),
    ("anything", "", 0.0),  # an empty gold answer is never "contained"
])
def test_contains_answer(reply, gold, hit):
    assert contains_answer(reply, gold) == hit


@pytest.mark.parametrize("reply, gold, ok", [
    ("1889.", "1889", 1.0),
    ("in 1889 indeed", "1889", 1.0),          # 3 words <= 3 x 1
    ("it was in 1889", "1889", 0.0),          # 4 words > 3 x 1
    ("a b c d e f", "Gustave Eiffel", 1.0),   # 6 <= 3 x 2
    ("a b c d e f g", "Gustave Eiffel", 0.0),
])
def test_length_ok(reply, gold, ok):
    assert length_ok(reply, gold) == ok


@pytest.mark.parametrize("text, d3", [
    ("one two three four", 1.0),                # 2 trigrams, both unique
    ("la la la la la", 1 / 3),                  # 3 trigrams, 1 unique
    ("a b c a b c", 3 / 4),                     # (a b c) twice among 4
    ("too short", 1.0),                         # no trigram at all
])
def test_distinct3(text, d3):
    assert distinct3(text) == pytest.approx(d3)


def test_stopped_and_means_over_records():
    recs = [
        HarnessRecord("1889.", "1889", stopped=True),                        # em, contains, short
        HarnessRecord("It was completed in 1889 and 1889 and 1889 and 1889", "1889", stopped=False),
        HarnessRecord("Paris", "Gustave Eiffel", stopped=True),
    ]
    s = score_harness(recs)
    assert s["exact_match"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["contains_answer"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["stopped"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["length_ok"] == pytest.approx(2 / 3, abs=1e-4)
    # second reply: 11 words, 9 trigrams, "and 1889 and" / "1889 and 1889" repeat -> 6 unique
    assert s["distinct3"] == pytest.approx((1 + 6 / 9 + 1) / 3, abs=1e-4)
    assert score_harness([]) == {m: 0.0 for m in s}

"""sft_dataset building blocks: task quotas, passages, the article-level split, the filters."""
from __future__ import annotations

import pytest

from wikigpt_core.align.passages import article_passages, clean_sentence
from wikigpt_core.align.sft_data import _Filter, _heldout_articles, task_quotas
from wikigpt_core.align.teacher import ExampleSpec
from wikigpt_core.config import SFTDataConfig

PASSAGE = "The tower was completed in 1889 for the fair. It was designed by Gustave Eiffel's company in Paris."


@pytest.mark.parametrize("mix, n, want", [
    ({"qa": 0.5, "summarize": 0.25, "extract": 0.25}, 600, {"qa": 300, "summarize": 150, "extract": 150}),
    ({"qa": 1.0}, 10, {"qa": 10, "summarize": 0, "extract": 0}),
    ({"qa": 1, "summarize": 1, "extract": 1}, 10, {"qa": 4, "summarize": 3, "extract": 3}),  # rounding goes to the largest share
])
def test_task_quotas_follow_the_mix(mix, n, want):
    assert task_quotas(SFTDataConfig(n_examples=n, mix=mix)) == want


@pytest.mark.parametrize("mix", [{"qa": 0.5, "poetry": 0.5}, {}, {"qa": -1.0, "extract": 2.0}, {"qa": 0.0}])
def test_bad_mix_is_rejected_by_name(mix):
    with pytest.raises(ValueError, match="sft_data.mix"):
        task_quotas(SFTDataConfig(mix=mix))


@pytest.mark.parametrize("sentence, ok", [
    ("The tower was completed in 1889 for the fair.", True),
    ("thumb|200px|The tower at night.", False),          # caption markup
    ("Smith, History of Paris, 2009, pp. 12.", False),   # citation
    ("and then it was finished.", False),                # fragment
    ("Too short.", False),
])
def test_clean_sentence(sentence, ok):
    assert clean_sentence(sentence) == ok


def test_article_passages_pack_whole_sentences_and_drop_non_english():
    sents = [f"The tower number {i} was completed in {1800 + i} for the fair in the city." for i in range(12)]
    article = {"id": 7, "title": "Tower", "url": "u", "text": " ".join(sents) + "\n\nthumb|x|junk.\n\n"
               + " ".join(["Der Turm wurde gebaut und steht seit langer Zeit dort drüben."] * 6)}
    passages, dropped_language = article_passages(article, passage_chars=200, max_passages=10, min_english_ratio=0.25)
    assert passages and all(len(p.text) <= 200 for p in passages)
    assert all(p.text.endswith(".") and p.text.startswith("The tower") for p in passages)
    assert [p.passage_id for p in passages] == [7_000 + k for k in range(len(passages))]
    assert dropped_language >= 1  # the German paragraph
    capped, _ = article_passages(article, passage_chars=200, max_passages=2, min_english_ratio=0.25)
    assert len(capped) == 2


def test_heldout_split_is_by_article_deterministic_and_never_everything():
    ids = list(range(100))
    h = _heldout_articles(ids, 0.1, seed=7)
    assert len(h) == 10 and h == _heldout_articles(ids, 0.1, seed=7) and h != _heldout_articles(ids, 0.1, seed=8)
    assert len(_heldout_articles([1, 2], 0.9, seed=1)) == 1  # at least one article stays in train
    assert _heldout_articles(ids, 0.0, seed=1) == set()


def test_filters_count_each_reason():
    f = _Filter(SFTDataConfig(max_response_words=12))
    qa = ExampleSpec("qa", "Eiffel Tower", PASSAGE, 0)
    summ = ExampleSpec("summarize", "Eiffel Tower", PASSAGE, 0, "Summarize the passage.")
    ok = {"question": "When was the tower completed?", "answer": "1889", "response": "1889."}
    assert f.keep(qa, ok)["answer"] == "1889"
    assert f.keep(qa, ok) is None                                                    # same prompt again
    assert f.keep(qa, None) is None                                                  # teacher failed
    assert f.keep(qa, {"question": "", "answer": "", "response": ""}) is None        # nothing to ask
    assert f.keep(qa, {"question": "Who?", "answer": "Napoleon", "response": "Napoleon."}) is None  # not in passage
    assert f.keep(summ, {"response": "Dragons and wizards fought over castles in distant kingdoms."}) is None
    assert f.keep(summ, {"response": "The tower " * 10}) is None                     # too long
    assert f.keep(summ, {"response": "Tower completed 1889 fair designed Gustave Eiffel's company Paris."}) is None  # no English prose
    assert dict(f.drops) == {"duplicate_prompt": 1, "teacher_failed": 1, "empty": 1, "ungrounded": 2,
                             "length": 1, "language": 1}

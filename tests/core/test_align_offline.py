"""The built-in offline teacher/judge, the request format and the reply parser."""
from __future__ import annotations

import pytest

from wikigpt_core.align.false_premise import TEMPLATES, make_false_premises
from wikigpt_core.align.teacher import ExampleSpec, FalsePremiseSpec, Teacher
from wikigpt_core.config import TeacherConfig
from wikigpt_core.llm import offline, prompts
from wikigpt_core.llm.client import make_client

PASSAGE = ("The Danube is the second-longest river in Europe, after the Volga. The river was "
           "first mapped in detail in 1726 by Luigi Ferdinando Marsili. It flows about 2,850 "
           "kilometres from the Black Forest to the Black Sea, passing through Vienna and Budapest.")


def test_request_roundtrip_keeps_sections_even_with_fence_text():
    req = prompts.example_request("qa", "Danube", PASSAGE + " >>> tricky", 2)
    kind, sec = prompts.parse_request(req)
    assert kind == "qa" and sec["Title"] == "Danube" and sec["Variant"] == "2"
    assert sec["Passage"].startswith("The Danube") and ">>>" not in sec["Passage"]


@pytest.mark.parametrize("text", ['{"a": "x", "n": 3}', 'Sure!\n```json\n{"a": "x", "n": 3}\n```', 'x {bad} {"a": "x", "n": 3.0}'])
def test_parse_json_reply_finds_the_object(text):
    assert prompts.parse_json_reply(text, {"a": str, "n": float}) == {"a": "x", "n": 3.0}


def test_parse_json_reply_accepts_quoted_scores():
    assert prompts.parse_json_reply('{"score_a": "8", "score_b": 3}', {"score_a": float, "score_b": float}) == {
        "score_a": 8.0, "score_b": 3.0}
    with pytest.raises(prompts.ReplyFormatError):
        prompts.parse_json_reply('{"score_a": "great", "score_b": 3}', {"score_a": float, "score_b": float})


@pytest.mark.parametrize("text", ["no json here", '{"a": 1}', '{"b": "x"}'])
def test_parse_json_reply_rejects_bad_replies(text):
    with pytest.raises(prompts.ReplyFormatError):
        prompts.parse_json_reply(text, {"a": str})


def test_qa_candidates_are_grounded_and_distinct():
    cands = offline.qa_candidates("Danube", PASSAGE)
    assert ("What is the Danube?", "the second-longest river in Europe",
            "The Danube is the second-longest river in Europe.") == cands[0]
    assert ("When was the river first mapped in detail?", "1726", "1726.") in cands
    answers = [a for _, a, _ in cands]
    assert len(answers) == len(set(answers)) >= 4
    assert all(a.lower() in PASSAGE.lower() for a in answers)
    assert "2,850" in answers and "Luigi Ferdinando Marsili" in answers


def test_summary_and_extraction():
    s = offline.summarize(PASSAGE, "Summarize the passage in two sentences.")
    assert s.startswith("The Danube is the second-longest river") and len(s.split()) <= 60
    assert offline.extract_items(PASSAGE, "List every year mentioned in the passage.") == ["1726"]
    assert offline.extract_items(PASSAGE, "List every number that appears in the passage, other than years.") == ["2,850"]
    names = offline.extract_items(PASSAGE, "Extract the names of people, places and organizations.")
    assert {"Europe", "Luigi Ferdinando Marsili", "Black Forest", "Black Sea", "Vienna", "Budapest"} <= set(names)


def test_judge_scores_follow_the_criteria():
    q = "Answer the question using the passage.\n\n" + PASSAGE + "\n\nQuestion: When was the river first mapped?"
    good = offline.score_response(q, "1726.", "1726")
    assert good > offline.score_response(q, "1726. [cut off]", "1726")          # stopping
    assert good > offline.score_response(q, "It was mapped in 1492 by Columbus.", "1726")  # wrong answer
    assert good > offline.score_response(q, "1726 " + "the river the river " * 10, "1726")  # length/repetition
    assert offline.score_response(q, "", "1726") == 1.0


def test_offline_teacher_through_the_client_is_deterministic_and_cached(tmp_path):
    specs = [ExampleSpec("qa", "Danube", PASSAGE, v) for v in range(3)]
    cfg = TeacherConfig(backend="offline", concurrency=2)
    t1 = Teacher(make_client(cfg, tmp_path))
    out1 = t1.write_examples(specs)
    t2 = Teacher(make_client(cfg, tmp_path))
    out2 = t2.write_examples(specs)
    assert out1 == out2 and len({o["question"] for o in out1}) == 3
    assert t1.usage.requests == 3 and t2.usage.requests == 0 and t2.usage.cache_hits == 3
    fp = t1.write_false_premise([FalsePremiseSpec("Who won the 1850 FIFA World Cup?", "there was no World Cup before 1930",
                                                   "Name: Uruguay\nYear: 1850")])[0]
    assert "false premise" in fp["refusal"] and "1930" in fp["refusal"]
    assert "Uruguay" in fp["invented"] and "premise" not in fp["invented"]


def test_false_premises_are_distinct_and_respect_exclusions():
    ents = {"Marie Curie": "Marie Curie was a physicist. She won two prizes and her work in 1898 was famous.",
            "Alabama": "Alabama is a state. It joined the union in 1819.",
            "Danube": PASSAGE}
    fps = make_false_premises(ents, 8, seed=1, exclude={"Who won the 1819 FIFA World Cup?"})
    qs = [f.question for f in fps]
    assert len(qs) == len(set(qs)) == 8
    assert "Who won the 1819 FIFA World Cup?" not in qs
    # person-only templates only ever name the person
    person_only = [t.split("{")[0] for t, _, p in TEMPLATES if p]
    for f in fps:
        if any(f.question.startswith(p) for p in person_only):
            assert "Marie Curie" in f.question
    assert all(f.reason for f in fps)


@pytest.mark.parametrize("profile", ["124m", "350m"])
def test_big_profiles_use_a_real_teacher_unless_the_rules_are_named(profile):
    from wikigpt_core.config import apply_overrides, load_settings

    settings = load_settings(profile, env=False)
    assert settings.teacher.backend == "openai"
    named = apply_overrides(settings, {"teacher": {"backend": "offline"}})
    assert named.teacher.backend == "offline"
    assert load_settings("tiny", env=False).teacher.backend == "offline"  # the CPU demo needs no server

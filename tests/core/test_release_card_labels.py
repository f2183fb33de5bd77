"""The model card names who wrote and judged the data, from the lineage, in plain words: a rule
system is never presented as a model."""
from __future__ import annotations

from wikigpt_core.model_config import GPTConfig
from wikigpt_core.release.model_card import render_model_card

CFG = GPTConfig(vocab_size=320, block_size=96, n_layer=2, n_head=4, n_embd=64, mlp_multiple_of=32)


def _card(sft: dict, pref: dict, evaluation: dict) -> str:
    lineage = {"sft_dataset": {"stats": sft}, "preference_dataset": {"stats": pref},
               "eval_report": {"stats": evaluation}}
    return render_model_card(repo_name="wikigpt-tiny-instruct", model_cfg=CFG, params=1, lineage=lineage,
                             report={}, datasets=["wikimedia/wikipedia"])


def test_offline_rules_are_named_as_rules_not_a_model():
    rules = {"teacher_backend": "offline", "teacher_model": "wikigpt-offline-rules-v1"}
    card = _card(rules, rules, {"judge_backend": "offline", "judge_model": "wikigpt-offline-rules-v1"})
    assert "A rule system, not a model, wrote and judged data for this run" in card
    assert card.count("`wikigpt-offline-rules-v1`: deterministic rules, not a language model") == 5
    assert "a teacher model" not in card and "teacher acting as judge" not in card


def test_real_models_are_named_from_the_lineage():
    card = _card({"teacher_backend": "openai", "teacher_model": "Qwen/Qwen2.5-7B-Instruct"},
                 {"teacher_backend": "openai", "teacher_model": "judge-model-x"},
                 {"judge_backend": "openai", "judge_model": "judge-model-y"})
    assert "| SFT data written by | the language model `Qwen/Qwen2.5-7B-Instruct`" in card
    assert "| preference pairs judged by | the language model `judge-model-x`" in card
    assert "| evaluation judged by | the language model `judge-model-y`" in card
    assert "rule system" not in card


def test_mixed_run_flags_the_rule_made_part_and_unknowns_stay_unknown():
    card = _card({"teacher_backend": "openai", "teacher_model": "m"}, {},
                 {"judge_backend": "offline", "judge_model": "wikigpt-offline-rules-v1"})
    assert "| preference pairs judged by | n/a |" in card
    assert "| evaluation judged by | the built-in offline rule system" in card
    assert "A rule system, not a model, wrote and judged data for this run" in card

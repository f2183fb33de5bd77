from __future__ import annotations

import dataclasses

import pytest

from wikigpt_core.config import apply_overrides, load_settings


def test_profiles_and_unknown_profile():
    assert load_settings("tiny").model.vocab_size == load_settings("tiny").tokenizer.vocab_size
    big = load_settings("124m").model
    assert (big.n_layer, big.n_head, big.n_embd, big.vocab_size, big.block_size, big.mlp_hidden) == \
        (12, 12, 768, 32_768, 1_024, 2_048)
    assert load_settings("350m").model.n_layer == 24
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        load_settings("huge")


def test_toml_overrides(tmp_path):
    path = tmp_path / "o.toml"
    path.write_text("[clean]\nmin_chars = 777\n")
    assert load_settings("tiny", path).clean.min_chars == 777
    path.write_text("[clean]\nmin_charz = 1\n")
    with pytest.raises(ValueError, match="min_charz"):
        load_settings("tiny", path)
    path.write_text("[nope]\nx = 1\n")
    with pytest.raises(ValueError, match="unknown config section 'nope'"):
        load_settings("tiny", path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings("tiny", tmp_path / "missing.toml")


def test_vocab_mismatch_is_refused():
    s = load_settings("tiny")
    with pytest.raises(ValueError, match="must equal"):
        apply_overrides(s, {"tokenizer": {"vocab_size": 5000}})


def test_code_version_tracks_only_the_stage_sections():
    from wikigpt_core.stages import get_stage, stage_code_version

    s = load_settings("tiny")
    t = apply_overrides(s, {"clean": {"min_chars": 1}})
    clean, dedup = get_stage("cleaned_articles"), get_stage("deduped_corpus")
    assert stage_code_version(clean, s) != stage_code_version(clean, t)
    assert stage_code_version(dedup, s) == stage_code_version(dedup, t)


def test_dump_from_env(monkeypatch):
    monkeypatch.setenv("WIKIGPT_DUMP", "enwiki/20261101")
    assert load_settings("tiny").dump.source == "enwiki/20261101"


def test_config_and_registry_load_without_torch_or_dagster():
    """A data worker imports the settings (model shape included) and the stage registry
    without paying for torch, and the core never needs Dagster."""
    import subprocess
    import sys

    code = ("import sys, wikigpt_core.config, wikigpt_core.stages, wikigpt_core.spec; "
            "bad = [m for m in ('torch', 'dagster') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("section, name, value, expected", [
    ("clean", "min_chars", "abc", "an integer >= 0"),
    ("pretrain", "lr", "fast", "a number > 0"),
    ("sft", "batch_size", -4, "an integer >= 1"),
    ("clean", "workers", -3, "an integer >= 0"),
    ("dedup", "workers", -3, "an integer >= 0"),
    ("dedup", "batch_docs", 0, "an integer >= 1"),
    ("shards", "batch_docs", 0, "an integer >= 1"),
    ("pretrain", "lr", float("nan"), "a number > 0"),
    ("clean", "min_chars", True, "an integer >= 0"),
    ("shards", "val_fraction", 1.0, "a number in [0, 1)"),
    ("model", "n_head", "4", "an integer >= 1"),
    ("sft_data", "mix", {"qa": "half"}, "a table of numbers"),
    ("eval", "lm_eval_tasks", "hellaswag", "a list of strings"),
    ("dpo", "precision", "fp16", "one of auto, bf16, fp32"),
])
def test_bad_values_are_refused_at_load_naming_setting_expectation_and_value(
        tmp_path, section, name, value, expected):
    with pytest.raises(ValueError) as refused:
        apply_overrides(load_settings("tiny", env=False), {section: {name: value}})
    assert str(refused.value) == f"[{section}] {name} = {value!r} is not {expected}"


def test_a_refused_toml_value_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[clean]\nmin_chars = "abc"\n')
    with pytest.raises(ValueError, match=r"mine\.toml: \[clean\] min_chars = 'abc' is not an integer"):
        load_settings("tiny", path)


@pytest.mark.parametrize("section, name, value", [
    ("clean", "workers", 0), ("clean", "workers", 3), ("dedup", "batch_docs", 1),
    ("pretrain", "lr", 1),  # TOML writes a whole number without a point
    ("pretrain", "epochs", 2.5), ("pretrain", "epochs", None), ("shards", "val_fraction", 0.0),
    ("sft_data", "mix", {"qa": 1, "summarize": 0.5}), ("release", "gguf", True),
    ("gguf", "q4_k_m_ppl_max_ratio", 1),
])
def test_valid_values_still_load(section, name, value):
    settings = apply_overrides(load_settings("tiny", env=False), {section: {name: value}})
    assert getattr(settings.section(section), name) == value


@pytest.mark.parametrize("profile", ["tiny", "124m", "350m"])
def test_every_preset_passes_its_own_checks(profile):
    from wikigpt_core.config import check_section

    settings = load_settings(profile, env=False)
    for field in dataclasses.fields(settings):
        if field.name != "profile":
            check_section(settings.section(field.name), field.name)


def test_every_rule_names_a_real_field():
    """A renamed field would otherwise lose its range check silently."""
    import dataclasses

    from wikigpt_core.config import _RULES

    for cls, rules in _RULES.items():
        assert set(rules) <= {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_nothing_is_clamped_downstream():
    from wikigpt_core.data.pool import resolve_workers

    with pytest.raises(ValueError, match="workers = -3"):
        resolve_workers(-3)
    assert resolve_workers(2) == 2

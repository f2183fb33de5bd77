from __future__ import annotations

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


def test_section_hash_tracks_only_named_sections():
    s = load_settings("tiny")
    t = apply_overrides(s, {"clean": {"min_chars": 1}})
    assert s.sections_hash(["clean"]) != t.sections_hash(["clean"])
    assert s.sections_hash(["dedup", "model"]) == t.sections_hash(["dedup", "model"])


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

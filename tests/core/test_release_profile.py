"""The release records the profile its spec carries, on the pipeline's real versioned layout
(`$WIKIGPT_HOME/<profile>/hf_release/<version>/`), where the folder's parent is `hf_release`."""
from __future__ import annotations

import json

import pytest

import tests.core.test_release_support as support
from wikigpt_core.config import asset_root, load_settings
from wikigpt_core.release.publish import HubTarget
from wikigpt_core.run import run_spec
from wikigpt_core.stages import resolve_spec


class _Quiet:
    """A stage reporter that keeps nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The release's upstreams materialized under $WIKIGPT_HOME/tiny/<asset>/v1, `current` set."""
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WIKIGPT_PROFILE", raising=False)  # the profile must come from the spec
    tok = support.train_tokenizer(tmp_path / "tok")
    model = support.random_model(tok.vocab_size)
    support.materialize_upstreams(tmp_path / "home", model, tok)
    return tmp_path / "home"


def test_run_manifest_and_hub_commit_name_the_spec_profile(home, monkeypatch):
    published = []
    monkeypatch.setattr("wikigpt_core.release.stage.hub_target_from_env",
                        lambda: HubTarget(repo_id="acme/wikigpt", token="hf_x"))
    monkeypatch.setattr("wikigpt_core.release.stage.publish",
                        lambda folder, target, commit_message: published.append(commit_message))
    settings = load_settings("tiny", env=False)
    spec = resolve_spec(settings, "hf_release")
    assert spec.out.parent == asset_root(settings, "hf_release")  # <home>/tiny/hf_release/<version>

    result = run_spec(spec, _Quiet())

    run_manifest = json.loads((result.path / "run_manifest.json").read_text())
    assert run_manifest["profile"] == spec.profile == "tiny"
    assert published == ["WikiGPT release (tiny profile)"]

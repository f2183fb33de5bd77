"""The code location loads and has exactly the twelve assets with the lineage of the brief, and
the thirteenth, gguf_release, with its checks when the settings switch it on."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import load_settings
from wikigpt_pipeline.project import build_definitions

EXPECTED_DEPS = {
    "wiki_dump": {"wikipedia_dump"},  # the observable dump source (not materializable)
    "cleaned_articles": {"wiki_dump"},
    "deduped_corpus": {"cleaned_articles"},
    "tokenizer": {"deduped_corpus"},
    "token_shards": {"deduped_corpus", "tokenizer"},
    "base_checkpoint": {"token_shards", "tokenizer"},
    "sft_dataset": {"deduped_corpus"},
    "sft_checkpoint": {"base_checkpoint", "sft_dataset", "token_shards"},
    "preference_dataset": {"sft_checkpoint", "sft_dataset"},
    "dpo_checkpoint": {"sft_checkpoint", "preference_dataset"},
    "eval_report": {"base_checkpoint", "sft_checkpoint", "dpo_checkpoint", "token_shards", "sft_dataset"},
    "hf_release": {"dpo_checkpoint", "tokenizer", "eval_report"},
}


def test_defs_can_load():
    from wikigpt_pipeline.definitions import defs

    assert isinstance(defs, dg.Definitions)
    defs.resolve_job_def("wikigpt_pipeline")
    defs.resolve_job_def("eval_refresh")


def test_twelve_assets_with_exact_lineage():
    graph = build_definitions(load_settings("tiny")).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.materializable_asset_keys}
    assert keys == set(EXPECTED_DEPS)
    for key, deps in EXPECTED_DEPS.items():
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys}
        assert parents == deps, key


def test_gguf_release_and_its_checks_only_when_switched_on():
    from wikigpt_core.config import apply_overrides

    settings = load_settings("tiny")
    off = build_definitions(settings).resolve_asset_graph()
    on = build_definitions(apply_overrides(settings, {"release": {"gguf": True}})).resolve_asset_graph()
    assert dg.AssetKey("gguf_release") not in off.materializable_asset_keys
    parents = {p.to_user_string() for p in on.get(dg.AssetKey("gguf_release")).parent_keys}
    assert parents == {"hf_release", "token_shards"}
    checks = {k.name: k for k in on.asset_check_keys if k.asset_key == dg.AssetKey("gguf_release")}
    assert set(checks) == {"gguf_files_answer_in_llama_cpp", "gguf_perplexity_within_bounds"}
    assert not [k for k in off.asset_check_keys if k.asset_key == dg.AssetKey("gguf_release")]
    blocking = {name: on.get_check_spec(key).blocking for name, key in checks.items()}
    assert blocking == {"gguf_files_answer_in_llama_cpp": True, "gguf_perplexity_within_bounds": False}
    # its switch and its own section version it; the release's own version does not see [gguf]
    gguf_changed = apply_overrides(settings, {"release": {"gguf": True}, "gguf": {"ppl_windows": 3}})
    again = build_definitions(gguf_changed).resolve_asset_graph()
    assert again.get(dg.AssetKey("gguf_release")).code_version != on.get(dg.AssetKey("gguf_release")).code_version
    assert again.get(dg.AssetKey("hf_release")).code_version == on.get(dg.AssetKey("hf_release")).code_version


def test_every_asset_has_a_config_derived_code_version():
    settings = load_settings("tiny")
    graph = build_definitions(settings).resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        assert graph.get(key).code_version, key
    # Changing one cleaning value changes exactly cleaned_articles' code version.
    from wikigpt_core.config import apply_overrides

    changed = apply_overrides(settings, {"clean": {"min_chars": settings.clean.min_chars + 1}})
    graph2 = build_definitions(changed).resolve_asset_graph()
    differ = {k.to_user_string() for k in graph.materializable_asset_keys
              if graph.get(k).code_version != graph2.get(k).code_version}
    assert differ == {"cleaned_articles"}


def test_gpu_assets_share_one_pool():
    graph = build_definitions(load_settings("tiny")).resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.materializable_asset_keys}
    for key in ("base_checkpoint", "sft_checkpoint", "dpo_checkpoint"):
        assert pools[key] == {"gpu"}, key
    for key in ("wiki_dump", "cleaned_articles", "tokenizer", "hf_release"):
        assert not pools[key], key


def test_the_launcher_resource_is_the_class_wikigpt_launcher_names(monkeypatch):
    from wikigpt_pipeline.launchers import LocalLauncher, SkyPilotLauncher

    monkeypatch.delenv("WIKIGPT_LAUNCHER", raising=False)
    assert type(build_definitions(load_settings("tiny")).resources["launcher"]) is LocalLauncher
    monkeypatch.setenv("WIKIGPT_LAUNCHER", "skypilot")
    assert type(build_definitions(load_settings("tiny")).resources["launcher"]) is SkyPilotLauncher

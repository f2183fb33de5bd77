"""The hf_release folder: stock transformers loads it with the core's logits and chat ids; the
key map is explicit and strict; card, gallery, manifest and license come from lineage."""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.artifacts import content_hash  # noqa: E402
from wikigpt_core.chat import CHAT_TEMPLATE, render_prompt  # noqa: E402
from wikigpt_core.generation import SamplingParams, generate_ids  # noqa: E402
from wikigpt_core.release.hf_export import (ConversionError, core_to_hf, gpt_config_from_llama,  # noqa: E402
                                            hf_to_core, load_release_model)

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Who was Ada Lovelace?"}],
    [{"role": "user", "content": "Who was Ada Lovelace?"},
     {"role": "assistant", "content": "An English mathematician."},
     {"role": "user", "content": "  And what is the capital of France?\n"}],
    [{"role": "user", "content": "Résumé: naïve café — 東京 🙂, tabs\tand\nnewlines"}],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    tok = support.train_tokenizer(tmp / "tok")
    model = support.random_model(tok.vocab_size)
    return support.build_release(tmp, model, tmp / "tok"), model, tok


def test_transformers_logits_equal_core(built):
    release, model, tok = built
    hf = transformers.AutoModelForCausalLM.from_pretrained(release, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, tok.vocab_size, (3, model.config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf_logits = hf(ids).logits
        core_logits, _ = model(ids, all_logits=True)
    assert hf_logits.dtype == torch.float32
    assert (hf_logits - core_logits).abs().max().item() <= 1e-4
    # Greedy continuation through HF's own KV cache matches the core's.
    prompt = torch.tensor([render_prompt(CONVERSATIONS[1], tok)])
    with torch.no_grad():
        hf_out = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    (core,) = generate_ids(model, prompt.tolist(), [SamplingParams(12, 0.0, 1.0)])
    assert core.tokens and hf_out[0, prompt.shape[1]:].tolist()[:len(core.tokens)] == core.tokens


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_apply_chat_template_ids_equal_core(built, conversation):
    release, _, tok = built
    hf_tok = transformers.AutoTokenizer.from_pretrained(release)
    enc = hf_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    assert ids == render_prompt(conversation, tok)
    assert hf_tok.eos_token == "<|end|>" and hf_tok.eos_token_id == tok.end_id
    if len(conversation) == 1:  # and decoding the content span gives the text back
        assert hf_tok.decode(ids[1:-2]) == conversation[0]["content"]


def test_release_folder_contents(built):
    release, model, tok = built
    names = {p.name for p in release.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md", "gallery.md", "run_manifest.json",
            "LICENSE"} <= names
    cfg = json.loads((release / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["rope_theta"] == 10_000.0
    assert cfg["intermediate_size"] == model.config.mlp_hidden and cfg["torch_dtype"] == "float32"
    assert json.loads((release / "generation_config.json").read_text())["eos_token_id"] == tok.end_id
    tcfg = json.loads((release / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == CHAT_TEMPLATE and tcfg["eos_token"] == "<|end|>"
    with safe_open(release / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert "model.layers.1.self_attn.v_proj.weight" in keys and not any("qkv" in k for k in keys)
    manifest = json.loads((release / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["params"] == model.num_params() and stats["published"] is False
    assert stats["files"] == len(names) - 1 and stats["bytes"] > 0
    assert all(isinstance(v, (int, float, str, bool)) for v in stats.values())
    dpo_hash = content_hash(release.parent.parent / "release_dpo")
    assert manifest["inputs"]["dpo_checkpoint"] == dpo_hash and manifest["inputs"]["wiki_dump"] == "h-dump"


def test_model_card_filled_from_lineage(built):
    release = built[0]
    card = (release / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-sa-4.0" and front["language"] == ["en"]
    assert "wikimedia/wikipedia" in front["datasets"] and "llama" in front["tags"]
    for section in ("## Architecture", "## Data provenance", "## SFT and DPO data", "## Training",
                    "## Evaluation", "## Chat format", "## Limitations", "## License"):
        assert section in card
    # Real numbers from lineage and the eval report, not placeholders.
    for figure in ("2017-01-01", "12,345", "9,876", "4,321", "too_short 700", "| 77 |", "| 44 |",
                   "3,141,592", "| 300 |", "2,457,600", "0.5", "1.61", "RTX4090:1 (skypilot)",
                   "| 540 |", "300 / 150 / 150", "| 13 |", "0.81", "1.25", "29.96",
                   "13.8", "+9.4 %", "89 %", "0.97"):
        assert figure in card, figure
    assert "hallucinates" in card and "English only" in card
    gallery = (release / "gallery.md").read_text()
    assert "Who won the 1850 FIFA World Cup?" in gallery and "The 1850 ```cup``` was" in gallery
    assert "````text" in gallery  # a longer fence keeps the backticks verbatim
    license_text = (release / "LICENSE").read_text()
    assert "https://creativecommons.org/licenses/by-sa/4.0/legalcode" in license_text
    assert "Attribution-ShareAlike 4.0" in license_text


def test_run_manifest(built):
    m = json.loads((built[0] / "run_manifest.json").read_text())
    assert set(m) >= {"git", "packages", "hardware", "profile", "checkpoints"}
    assert m["profile"] == "tiny"  # the profile run_release was given
    assert m["packages"]["torch"] == importlib.metadata.version("torch")
    dpo_hash = content_hash(built[0].parent.parent / "release_dpo")
    assert {k: v["content_hash"] for k, v in m["checkpoints"].items()} == {
        "base_checkpoint": "h-base", "sft_checkpoint": "h-sft", "dpo_checkpoint": dpo_hash}
    assert m["verified_inputs"]["dpo_checkpoint"] == dpo_hash
    assert len(m["weights_sha256"]) == 64 and m["hardware"]["cpu_count"] >= 1


def test_release_loads_back_into_core(built):
    release, model, _ = built
    loaded = load_release_model(release)
    assert _shape(loaded.config) == _shape(model.config)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_key_map_is_strict():
    model = support.random_model(300)
    state = dict(model.state_dict())
    hf = core_to_hf(state, model.config.n_layer)
    assert len(hf) == 2 + 9 * model.config.n_layer
    assert torch.equal(torch.cat([hf["model.layers.0.self_attn.q_proj.weight"],
                                  hf["model.layers.0.self_attn.k_proj.weight"],
                                  hf["model.layers.0.self_attn.v_proj.weight"]]),
                       state["blocks.0.attn.qkv.weight"])
    with pytest.raises(ConversionError, match="blocks.0.attn.bias"):
        core_to_hf({**state, "blocks.0.attn.bias": torch.zeros(3)}, model.config.n_layer)
    with pytest.raises(ConversionError, match="blocks.7"):
        core_to_hf({**state, "blocks.7.attn_norm.weight": torch.ones(4)}, model.config.n_layer)
    untied = {**state, "lm_head.weight": state["tok_emb.weight"] + 1}
    with pytest.raises(ConversionError, match="tied"):
        core_to_hf(untied, model.config.n_layer)
    missing_v = {k: v for k, v in hf.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(ConversionError, match="v_proj"):
        hf_to_core(missing_v, model.config.n_layer)
    with pytest.raises(ConversionError, match="rotary_emb"):
        hf_to_core({**hf, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2)}, 2)


@pytest.mark.parametrize("key,value", [("num_key_value_heads", 2), ("attention_bias", True),
                                       ("tie_word_embeddings", False), ("hidden_act", "gelu")])
def test_config_mapping_rejects_what_core_cannot_run(built, key, value):
    cfg = json.loads((built[0] / "config.json").read_text())
    assert _shape(gpt_config_from_llama(cfg)) == _shape(built[1].config)
    with pytest.raises(ConversionError, match=key):
        gpt_config_from_llama({**cfg, key: value})


def _shape(cfg) -> tuple:
    """The fields that define the network (mlp_multiple_of is only a rounding rule)."""
    return (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.head_dim,
            cfg.mlp_hidden, cfg.rope_theta, cfg.norm_eps)


def test_model_card_usage_snippet_runs(built, capsys):
    release = built[0]
    card = (release / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"wikigpt-tiny-instruct"' in code
    assert "max_new_tokens=128" in code
    # Shorten the generation first, then point at the folder (whose path may contain "128").
    code = code.replace("max_new_tokens=128", "max_new_tokens=8")
    code = code.replace('"wikigpt-tiny-instruct"', repr(str(release)))
    exec(compile(code, "README.md", "exec"), {})  # raises if the snippet is wrong
    assert capsys.readouterr().out.endswith("\n")  # it got as far as printing the reply


def test_release_cli_reads_lineage_from_manifests(built, tmp_path):
    """The stage CLI on a WIKIGPT_HOME laid out like the pipeline's: `--write-spec` resolves the
    upstreams' current versions, and `--spec` runs the release from that spec alone."""
    import subprocess

    _, model, tok = built
    home = tmp_path / "home"
    support.materialize_upstreams(home, model, tok)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "WIKIGPT_"))}
    env |= {"WIKIGPT_HOME": str(home)}
    spec = tmp_path / "spec.json"
    cli = [sys.executable, "-m", "wikigpt_core.run", "hf_release"]
    wrote = subprocess.run([*cli, "--write-spec", str(spec), "--profile", "tiny"], cwd=support.ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    out = subprocess.run([*cli, "--spec", str(spec)], cwd=support.ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    release = Path(json.loads(spec.read_text())["out"])
    assert release.parent == home / "tiny" / "hf_release"  # a version dir, named by its hash
    card = (release / "README.md").read_text()
    assert "3,141,592" in card and "| 77 |" in card and "RTX4090:1 (skypilot)" in card
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["stats"]["published"] is False
    dpo_hash = json.loads((home / "tiny" / "dpo_checkpoint" / "v1" / "manifest.json").read_text())["content_hash"]
    assert manifest["inputs"]["dpo_checkpoint"] == dpo_hash
    run = json.loads((release / "run_manifest.json").read_text())
    assert run["checkpoints"]["dpo_checkpoint"]["content_hash"] == dpo_hash


def test_release_refuses_inputs_that_do_not_match_lineage(built, tmp_path):
    from wikigpt_core.config import ReleaseConfig
    from wikigpt_core.model_io import save_model
    from wikigpt_core.release import run_release
    from wikigpt_core.release.stage import LineageMismatch

    release, model, _ = built
    dpo = tmp_path / "dpo"
    save_model(model, dpo)
    lineage = support.lineage_for(dpo, release, release.parent.parent / "release_eval")
    lineage["dpo_checkpoint"]["content_hash"] = "0" * 64  # metadata of another training run
    with pytest.raises(LineageMismatch, match="dpo_checkpoint"):
        run_release(ReleaseConfig(), dpo, release, release.parent.parent / "release_eval",
                    tmp_path / "tiny" / "out", lineage, profile="tiny")
    assert not (tmp_path / "tiny" / "out").exists()

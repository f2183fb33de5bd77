"""Core GPT <-> Hugging Face `LlamaForCausalLM`: an explicit key map, both directions.

The core model stores q, k and v as one fused (3C, C) projection; Llama stores three (C, C)
matrices. RoPE already uses Llama's rotate-half layout, so no row permutation is needed.
The LM head is tied to the embedding: the HF file stores it once (safetensors forbids shared
storage) and `tie_word_embeddings` re-ties it on load. Any name the map does not know raises,
so a model change can never silently drop or misplace a tensor.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from wikigpt_core.model import GPTConfig

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"

# Per-block 1:1 renames (core suffix -> HF suffix); the fused qkv is handled separately.
_BLOCK_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_CORE_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QKV = "attn.qkv.weight"
_HF_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")


class ConversionError(ValueError):
    """A tensor or config value that has no place in the other format."""


def core_to_hf(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename and split a core state dict into HF Llama names (tied head stored once)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name == "lm_head.weight":
            if not torch.equal(t, state["tok_emb.weight"]):
                raise ConversionError("lm_head.weight differs from tok_emb.weight; the release "
                                      "format needs a tied head (tie_word_embeddings)")
            continue
        if name in _TOP_MAP:
            out[_TOP_MAP[name]] = t
            continue
        m = _CORE_BLOCK.match(name)
        if not m or int(m.group(1)) >= n_layer:
            raise ConversionError(f"no Hugging Face name for core tensor {name!r}")
        i, rest = m.group(1), m.group(2)
        prefix = f"model.layers.{i}."
        if rest == _QKV:
            if t.shape[0] % 3:
                raise ConversionError(f"{name} has {t.shape[0]} rows, not a multiple of 3")
            for hf_name, part in zip(_HF_QKV, t.chunk(3, dim=0)):  # rows: q, then k, then v
                out[prefix + hf_name] = part
        elif rest in _BLOCK_MAP:
            out[prefix + _BLOCK_MAP[rest]] = t
        else:
            raise ConversionError(f"no Hugging Face name for core tensor {name!r}")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def hf_to_core(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Inverse of `core_to_hf`: fuse q/k/v back and re-tie the head to the embedding."""
    top_inv = {v: k for k, v in _TOP_MAP.items()}
    block_inv = {v: k for k, v in _BLOCK_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        if name in top_inv:
            out[top_inv[name]] = t
            continue
        if name == "lm_head.weight":  # present when a tool wrote the tied head explicitly
            continue
        m = _HF_BLOCK.match(name)
        if not m or int(m.group(1)) >= n_layer:
            raise ConversionError(f"no core name for Hugging Face tensor {name!r}")
        i, rest = m.group(1), m.group(2)
        if rest in _HF_QKV:
            qkv.setdefault(i, {})[rest] = t
        elif rest in block_inv:
            out[f"blocks.{i}.{block_inv[rest]}"] = t
        else:
            raise ConversionError(f"no core name for Hugging Face tensor {name!r}")
    for i, parts in qkv.items():
        missing = [p for p in _HF_QKV if p not in parts]
        if missing:
            raise ConversionError(f"layer {i} lacks {missing}; cannot rebuild the fused qkv")
        out[f"blocks.{i}.{_QKV}"] = torch.cat([parts[p] for p in _HF_QKV], dim=0)
    if "tok_emb.weight" not in out:
        raise ConversionError("model.embed_tokens.weight is missing")
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], out["tok_emb.weight"]):
        raise ConversionError("lm_head.weight differs from the embedding; the core model ties them")
    out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def llama_config(cfg: GPTConfig, *, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """The `config.json` of the Llama mapping (docs/reference.md, "Model shape"), loadable by
    stock transformers."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        # Both spellings: transformers >= 5 reads rope_parameters; older readers (vLLM,
        # llama.cpp's converter, transformers 4.x) read rope_theta.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def gpt_config_from_llama(hf: dict[str, Any], source: Path | str = HF_CONFIG) -> GPTConfig:
    """Rebuild the core GPTConfig from a release config.json; raise on what the core model
    cannot represent (grouped-query attention, biases, untied head, rope scaling...)."""
    def need(key: str, expected: Any) -> None:
        if hf.get(key, expected) != expected:
            raise ConversionError(f"{source}: {key}={hf.get(key)!r} is not supported "
                                  f"(the core model needs {expected!r})")

    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "max_position_embeddings"):
        if key not in hf:
            raise ConversionError(f"{source} lacks {key!r}; is this a WikiGPT release folder?")
    need("model_type", "llama")
    need("num_key_value_heads", hf["num_attention_heads"])
    need("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
    need("hidden_act", "silu")
    need("attention_bias", False)
    need("mlp_bias", False)
    need("tie_word_embeddings", True)
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ConversionError(f"{source}: rope scaling is not supported by the core model")
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    inter = int(hf["intermediate_size"])
    # GPTConfig derives the MLP width from a rounding multiple; pick one that reproduces it.
    for multiple in (256, 128, 64, 32, inter):
        cfg = GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=int(hf["max_position_embeddings"]),
                        n_layer=int(hf["num_hidden_layers"]), n_head=int(hf["num_attention_heads"]),
                        n_embd=int(hf["hidden_size"]), rope_theta=theta,
                        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp_multiple_of=multiple)
        if cfg.mlp_hidden == inter:
            return cfg
    raise ConversionError(f"{source}: intermediate_size={inter} is narrower than the core "
                          f"SwiGLU width 8/3 x {hf['hidden_size']}")


def write_hf_weights(model: torch.nn.Module, directory: Path) -> int:
    """Write `model.safetensors` with HF names into directory; returns the parameter count
    (tied head counted once)."""
    from safetensors.torch import save_file

    cfg = model.config
    hf_state = core_to_hf(dict(model.state_dict()), cfg.n_layer)
    save_file(hf_state, str(Path(directory) / HF_WEIGHTS), metadata={"format": "pt"})
    return sum(t.numel() for t in hf_state.values())


def load_release_model(release_dir: Path, device: str = "cpu") -> "torch.nn.Module":
    """Load a release folder (HF Llama format) into the core GPT, for KV-cache generation."""
    from safetensors.torch import load_file

    from wikigpt_core.model import GPT

    release_dir = Path(release_dir)
    cfg_path, weights = release_dir / HF_CONFIG, release_dir / HF_WEIGHTS
    for p in (cfg_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing; point --release at an hf_release folder "
                                    "(materialize the `hf_release` asset first)")
    cfg = gpt_config_from_llama(json.loads(cfg_path.read_text()), cfg_path)
    state = hf_to_core(load_file(str(weights)), cfg.n_layer)
    model = GPT(cfg)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ConversionError(f"{weights}: tensors missing {sorted(expected - set(state))[:5]}, "
                              f"unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=True)
    assert model.lm_head.weight is model.tok_emb.weight  # still tied after loading in place
    return model.to(device).eval()

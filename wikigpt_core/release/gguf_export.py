"""A release folder -> one GGUF file for llama.cpp (architecture `llama`); the `gguf_release`
stage writes its f16 and Q8_0 files with it.

Same tensor mapping as llama.cpp's own HF converter: q/k rows are permuted back from the HF
rotate-half layout to the interleaved-pair layout llama.cpp's llama RoPE expects; norms stay
float32; the tied head is not stored (llama.cpp reuses token_embd). The tokenizer goes in as
a GPT-2-style byte-level BPE (`gpt2` model, `gpt-2` pre-tokenizer) with its merges, the four
specials as control tokens, eos = <|end|> and the chat template.

    python -m wikigpt_core.release.gguf_export RELEASE_DIR OUT.gguf [--type q8_0|f16|f32]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wikigpt_core.release.hf_export import ConversionError, gpt_config_from_llama

TYPES = ("q8_0", "f16", "f32")
_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}


def interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> interleaved pairs, per head (inverse of HF's permute)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _BLOCK:
        return f"blk.{parts[2]}.{_BLOCK[parts[3]]}"
    raise ConversionError(f"no GGUF name for tensor {hf_name!r}")


def _vocab(release: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(release / "tokenizer.json"))
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    specials = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    tokens, types = [], []
    for i in range(vocab_size):  # the model's vocab may be padded beyond the tokenizer's
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL)
    return tokens, types


def export_gguf(release: Path, out: Path, qtype: str = "q8_0") -> dict[str, Any]:
    """Write `out`; returns {"path", "bytes", "tensors", "type"}."""
    import gguf
    from safetensors.numpy import load_file

    if qtype not in TYPES:
        raise ValueError(f"--type {qtype!r} is not one of {TYPES}")
    release, out = Path(release), Path(out)
    hf = json.loads((release / "config.json").read_text())
    cfg = gpt_config_from_llama(hf, release / "config.json")
    name = json.loads((release / "run_manifest.json").read_text())["release_config"]["repo_name"] \
        if (release / "run_manifest.json").exists() else release.name

    w = gguf.GGUFWriter(str(out), arch="llama")
    w.add_name(name)
    w.add_license("cc-by-sa-4.0")
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.mlp_hidden)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    ftype = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "f32": gguf.LlamaFileType.ALL_F32}[qtype]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = _vocab(release, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # byte-level BPE with the GPT-2 split regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    # Merges, bos/eos/pad ids, add_bos/add_eos flags and the chat template, read exactly the
    # way llama.cpp's converter reads them from tokenizer.json + tokenizer_config.json.
    gguf.SpecialVocab(release, load_merges=True, n_vocab=cfg.vocab_size).add_to_gguf(w)

    count = 0
    for hf_name, arr in load_file(str(release / "model.safetensors")).items():
        if hf_name == "lm_head.weight":
            continue  # tied: llama.cpp falls back to token_embd
        arr = arr.astype(np.float32)
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            arr = interleave_rows(arr, cfg.n_head)
        target = gguf_name(hf_name)
        if arr.ndim == 1 or qtype == "f32":
            w.add_tensor(target, arr)
        elif qtype == "f16":
            w.add_tensor(target, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(target, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        count += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"path": str(out), "bytes": out.stat().st_size, "tensors": count, "type": qtype}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wikigpt_core.release.gguf_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--type", choices=TYPES, default="q8_0")
    args = p.parse_args(argv)
    print(json.dumps(export_gguf(args.release, args.out, args.type)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

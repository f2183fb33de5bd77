"""GGUF export, checked two ways:

- llama.cpp itself (llama-cpp-python, in its own venv: tests/llamacpp/) loads the file and its
  logits, greedy tokens and tokenization must match the core model and tokenizer;
- a second opinion that needs no llama.cpp build: the file is read back with the `gguf` package
  and run through a small numpy forward pass written to llama.cpp's llama semantics
  (interleaved-pair RoPE, tied output = token_embd).

Both check the tensor names, the q/k row permutation and the hyperparameters together.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from tests.llamacpp.server import probe  # noqa: E402
from wikigpt_core.chat import CHAT_TEMPLATE, render_prompt  # noqa: E402
from wikigpt_core.release.gguf_export import export_gguf, interleave_rows  # noqa: E402

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    tok = support.train_tokenizer(tmp / "tok")
    model = support.random_model(tok.vocab_size)
    return support.build_release(tmp, model, tmp / "tok"), model, tmp


def _field(reader, key):
    return reader.fields[key].contents()


def _tensors(reader) -> dict[str, np.ndarray]:
    out = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        out[t.name] = data.astype(np.float64)
    return out


def llama_cpp_forward(reader, ids: list[int]) -> np.ndarray:
    """Logits (T, V) the way llama.cpp's `llama` architecture computes them."""
    W = _tensors(reader)
    n_layer = int(_field(reader, "llama.block_count"))
    n_head = int(_field(reader, "llama.attention.head_count"))
    eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))
    base = float(_field(reader, "llama.rope.freq_base"))
    emb = W["token_embd.weight"]
    C = emb.shape[1]
    hd = C // n_head
    T = len(ids)

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    pos = np.arange(T)[:, None]
    theta = pos * base ** (-np.arange(0, hd, 2) / hd)  # (T, hd/2), one angle per adjacent pair
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]

    def rope(x):  # x (T, H, hd); llama.cpp NORM mode rotates pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    x = emb[ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(n_layer):
        p = f"blk.{i}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn_q.weight"].T).reshape(T, n_head, hd))
        k = rope((h @ W[p + "attn_k.weight"].T).reshape(T, n_head, hd))
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_head, hd)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("hts,shd->thd", att, v).reshape(T, C)
        x = x + y @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    return norm(x, W["output_norm.weight"]) @ emb.T


def test_f32_gguf_runs_like_the_core_model(release):
    rel, model, tmp = release
    info = export_gguf(rel, tmp / "model-f32.gguf", "f32")
    assert info["tensors"] == 2 + 9 * model.config.n_layer
    reader = gguf.GGUFReader(tmp / "model-f32.gguf")
    assert _field(reader, "general.architecture") == "llama"
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied head not stored
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        core, _ = model(ids[None], all_logits=True)
    ours = llama_cpp_forward(reader, ids.tolist())
    assert np.abs(ours - core[0].double().numpy()).max() <= 1e-4


def test_q8_0_gguf_is_close_and_small(release):
    rel, model, tmp = release
    f32 = export_gguf(rel, tmp / "a-f32.gguf", "f32")
    q8 = export_gguf(rel, tmp / "a-q8.gguf", "q8_0")
    assert q8["bytes"] < 0.45 * f32["bytes"]
    reader = gguf.GGUFReader(tmp / "a-q8.gguf")
    ids = list(range(4, 36))
    with torch.no_grad():
        core, _ = model(torch.tensor([ids]), all_logits=True)
    ours = llama_cpp_forward(reader, ids)
    ref = core[0].double().numpy()
    assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_gguf_tokenizer_metadata(release):
    rel, model, tmp = release
    export_gguf(rel, tmp / "tok.gguf", "f16")
    reader = gguf.GGUFReader(tmp / "tok.gguf")
    tj = json.loads((rel / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens[:4] == ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert all(tokens[i] == t for t, i in tj["model"]["vocab"].items())
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[:4] == [int(gguf.TokenType.CONTROL)] * 4 and types[4] == int(gguf.TokenType.NORMAL)
    merges = _field(reader, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 3
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE


def test_interleave_rows_turns_rotate_half_into_adjacent_pairs():
    # One head of dim 8: HF rows [x0..x3 | y0..y3] pair (i, i+4); llama.cpp wants (2i, 2i+1).
    w = np.arange(8)[:, None].repeat(2, 1)
    assert interleave_rows(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_release_card_points_at_the_gguf_files_when_they_are_made(release):
    import dataclasses

    from wikigpt_core.config import ReleaseConfig
    from wikigpt_core.model_io import save_model
    from wikigpt_core.release import run_release
    from wikigpt_core.release.model_card import render_model_card

    rel, model, tmp = release
    save_model(model, tmp / "dpo")
    lineage = support.lineage_for(tmp / "dpo", rel, tmp / "release_eval")
    cards = {}
    for gguf_on in (False, True):
        cfg = dataclasses.replace(ReleaseConfig(repo_name="wikigpt-tiny-instruct"), gguf=gguf_on)
        out = run_release(cfg, tmp / "dpo", rel, tmp / "release_eval", tmp / "tiny" / f"gguf_{gguf_on}",
                          lineage, profile="tiny").path
        assert not list(out.glob("*.gguf"))  # GGUF files are the gguf_release asset's, not here
        cards[gguf_on] = (out / "README.md").read_text()
    assert "GGUF" not in cards[False]
    assert "`wikigpt-tiny-instruct-GGUF` (the `gguf_release` asset; not published)" in cards[True]
    published = render_model_card(repo_name="wikigpt-tiny-instruct", model_cfg=model.config, params=1,
                                  lineage=lineage, report=support.REPORT, datasets=[],
                                  hub_id="acme/wikigpt-tiny-instruct", gguf=True)
    assert "[acme/wikigpt-tiny-instruct-GGUF](https://huggingface.co/acme/wikigpt-tiny-instruct-GGUF)" in published


def test_llama_cpp_runs_the_export_like_the_core_model(tmp_path):
    """llama.cpp loads the f32 export: per-position logits equal the core model's, greedy decoding
    picks the same tokens, and its tokenizer (from the GGUF metadata) splits text the same way."""
    tok = support.train_tokenizer(tmp_path / "tok")
    # Larger block weights: greedy decoding then wanders instead of repeating one token.
    model = support.random_model(tok.vocab_size, seed=5, block_scale=3.0)
    rel = support.build_release(tmp_path, model, tmp_path / "tok")
    export_gguf(rel, tmp_path / "m.gguf", "f32")
    ids = torch.randint(4, tok.vocab_size, (48,), generator=torch.Generator().manual_seed(7))
    text = "Ada Lovelace was an English mathematician. The sky is blue!"
    prompt = render_prompt([{"role": "user", "content": "Who was Ada Lovelace?"}], tok)
    steps = 24
    got = probe(tmp_path / "m.gguf", {"ids": ids.tolist(), "greedy_prompt": prompt, "greedy_steps": steps,
                                      "text": text, "n_ctx": model.config.block_size}, tmp_path)
    assert got["n_vocab"] == model.config.vocab_size and got["n_ctx_train"] == model.config.block_size

    with torch.no_grad():
        core, _ = model(ids[None], all_logits=True)
    core = core[0].double().numpy()
    ours = np.asarray(got["logits"])
    assert ours.shape == core.shape
    assert np.abs(ours - core).max() <= 1e-3 * max(1.0, np.abs(core).max())
    assert (ours.argmax(-1) == core.argmax(-1)).all()

    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):  # the core model's own greedy decode, full forward each step
            logits, _ = model(torch.tensor([seq]), all_logits=True)
            seq.append(int(logits[0, -1].argmax()))
    core_greedy = seq[len(prompt):]
    assert got["greedy"] == core_greedy
    assert len(set(core_greedy)) >= 2  # not one token repeated

    assert got["tokenized"] == tok.encode(text)
    # The numpy reference agrees too (a second opinion that needs no llama.cpp build).
    ref = llama_cpp_forward(gguf.GGUFReader(tmp_path / "m.gguf"), ids.tolist())
    assert np.abs(ref - ours).max() <= 1e-3 * max(1.0, np.abs(core).max())

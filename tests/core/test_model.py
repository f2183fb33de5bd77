"""The model (docs/reference.md, "Model shape").

Shape, names, parameter count, untrained loss, RoPE/RMSNorm layout
(checked against Hugging Face Llama), KV-cache decoding, sampling, document masking, save/load."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from tests.core.train_support import greedy_recompute, single_thread  # noqa: F401 (fixture)
from wikigpt_core.generation import SamplingParams, generate_ids, sample_next
from wikigpt_core.model import GPT, GPTConfig, document_layout
from wikigpt_core.model_io import CheckpointError, load_model, save_model

TINY = GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, mlp_multiple_of=16)

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(seed: int = 0, cfg: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def test_124m_parameter_count_and_breakdown():
    model = GPT(GPTConfig())
    assert model.config.mlp_hidden == 2_048 and model.config.head_dim == 64
    assert model.num_params() == 110_119_680
    parts = {"emb": 0, "attn": 0, "mlp": 0, "norm": 0}
    for name, p in model.named_parameters():
        key = "emb" if name.startswith("tok_emb") else "attn" if ".attn." in name else \
            "mlp" if ".mlp." in name else "norm"
        parts[key] += p.numel()
    assert parts == {"emb": 25_165_824, "attn": 28_311_552, "mlp": 56_623_104, "norm": 19_200}
    # Untrained loss on random tokens sits near ln(32,768) = 10.397 (SPEC: within 0.5).
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 32_768, (2, 64), generator=g)
    y = torch.randint(0, 32_768, (2, 64), generator=g)
    with torch.no_grad():
        _, loss = model(x, y)
    assert abs(loss.item() - math.log(32_768)) < 0.5


@pytest.mark.parametrize("profile,count", [("tiny", 1_377_408), ("350m", 341_885_952)])
def test_profile_parameter_counts(profile, count):
    from wikigpt_core.config import load_settings

    with torch.device("meta"):  # shapes only, no memory
        model = GPT(load_settings(profile).model)
    assert model.num_params() == count
    if profile == "350m":  # a standard ~350 M Llama shape: 24 x 1,024, 16 heads of 64, SwiGLU 2,816
        assert (model.config.n_layer, model.config.n_head, model.config.head_dim) == (24, 16, 64)
        assert model.config.mlp_hidden == 2_816


def test_parameter_names_shapes_and_tied_head():
    model = tiny_model()
    C, H = TINY.n_embd, TINY.mlp_hidden
    expected = {"tok_emb.weight": (256, C), "norm.weight": (C,)}
    for i in range(TINY.n_layer):
        expected |= {f"blocks.{i}.attn_norm.weight": (C,), f"blocks.{i}.attn.qkv.weight": (3 * C, C),
                     f"blocks.{i}.attn.proj.weight": (C, C), f"blocks.{i}.mlp_norm.weight": (C,),
                     f"blocks.{i}.mlp.gate.weight": (H, C), f"blocks.{i}.mlp.up.weight": (H, C),
                     f"blocks.{i}.mlp.down.weight": (C, H)}
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == expected
    sd = model.state_dict()
    assert "lm_head.weight" in sd and "rope_cos" not in sd  # tables stay out of checkpoints
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_init_std_follows_spec():
    model = GPT(GPTConfig(n_layer=12, n_embd=768, n_head=12, vocab_size=4_096))
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 1e-3
    resid = 0.02 / math.sqrt(24)
    assert abs(model.blocks[3].attn.proj.weight.std().item() - resid) < 3e-4
    assert abs(model.blocks[3].mlp.down.weight.std().item() - resid) < 3e-4
    assert torch.all(model.norm.weight == 1)


def test_forward_shapes_and_ignore_index():
    model = tiny_model()
    x = torch.randint(0, 256, (3, 10))
    logits, loss = model(x)
    assert logits.shape == (3, 1, 256) and loss is None
    full, _ = model(x, all_logits=True)
    torch.testing.assert_close(full[:, -1:], logits)
    y = x.clone()
    y[:, :6] = -100
    logits, loss = model(x, y)
    assert logits.shape == (3, 10, 256)
    manual = torch.nn.functional.cross_entropy(logits[:, 6:].reshape(-1, 256), y[:, 6:].reshape(-1))
    torch.testing.assert_close(loss, manual)


def test_matches_hugging_face_llama():
    """Same weights in LlamaForCausalLM (q/k/v split from the fused rows) give the same logits:
    RMSNorm, rotate-half RoPE, SwiGLU and tying all line up without permutation."""
    transformers = pytest.importorskip("transformers")
    model = tiny_model(1)
    c = model.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = model.state_dict()
    mapped = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"],
              "lm_head.weight": sd["tok_emb.weight"]}
    for i in range(c.n_layer):
        q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].split(c.n_embd)
        p = f"model.layers.{i}."
        mapped |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": sd[f"blocks.{i}.attn.proj.weight"],
                   p + "mlp.gate_proj.weight": sd[f"blocks.{i}.mlp.gate.weight"],
                   p + "mlp.up_proj.weight": sd[f"blocks.{i}.mlp.up.weight"],
                   p + "mlp.down_proj.weight": sd[f"blocks.{i}.mlp.down.weight"],
                   p + "input_layernorm.weight": sd[f"blocks.{i}.attn_norm.weight"],
                   p + "post_attention_layernorm.weight": sd[f"blocks.{i}.mlp_norm.weight"]}
    hf.load_state_dict(mapped, strict=False)
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        ours, _ = model(x, all_logits=True)
        theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_kv_cache_logits_equal_full_recompute():
    model = tiny_model(2)
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full, _ = model(x, all_logits=True)  # (B, T, V)
        cache = model.new_cache(batch=2)
        prefill, _ = model(x[:, :12], cache=cache, all_logits=True)  # prompt once
        steps = [model(x[:, t:t + 1], cache=cache)[0] for t in range(12, 17)]  # one token each
        chunk, _ = model(x[:, 17:], cache=cache, all_logits=True)  # several at an offset
    torch.testing.assert_close(prefill, full[:, :12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 12:17], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk, full[:, 17:], atol=1e-5, rtol=1e-5)
    assert cache.pos == 20


@pytest.mark.parametrize("prompt_len,new", [(5, 10), (20, 30)])  # the second fills the context
def test_cached_greedy_decode_equals_full_recompute(prompt_len, new):
    model = tiny_model(3)
    prompts = torch.randint(4, 256, (2, prompt_len)).tolist()
    out = generate_ids(model, prompts, [SamplingParams(new, 0.0, 1.0)] * 2)
    for p, seq in zip(prompts, out):
        assert seq.tokens == greedy_recompute(model, p, new)
        full = len(p) + new >= model.config.block_size
        assert seq.finish_reason in (("length",) if full else ("length", "stop"))


def test_sample_next_nucleus_and_greedy():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.2, 0.2]]))
    assert sample_next(logits, 0.0, 1.0).item() == 1
    g = torch.Generator().manual_seed(0)
    # top_p 0.5: the first sorted token already reaches it -> always token 1
    assert {sample_next(logits, 1.0, 0.5, g).item() for _ in range(50)} == {1}
    # top_p 0.6: smallest prefix reaching 0.6 is {1, 2 or 3}; token 0 never appears
    seen = {sample_next(logits, 1.0, 0.6, g).item() for _ in range(300)}
    assert 0 not in seen and 1 in seen and len(seen) == 2


def test_document_layout_masks_and_positions():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    mask, pos = document_layout(doc)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    m = mask[0, 0]
    assert m[4, 3] and not m[3, 2] and not m[3, 4] and m[2, 0] and not m[5, 4]


def test_packed_forward_equals_separate_sequences():
    model = tiny_model(5)
    a, b = torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 7))
    packed = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 9 + [1] * 7])
    with torch.no_grad():
        lp, _ = model(packed, doc_ids=doc, all_logits=True)
        la, _ = model(a, all_logits=True)
        lb, _ = model(b, all_logits=True)
    torch.testing.assert_close(lp, torch.cat([la, lb], 1), atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip(tmp_path):
    model = tiny_model(6)
    save_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "tok_emb.weight" in keys  # tied head stored once
    loaded = load_model(tmp_path)
    assert not loaded.training and loaded.lm_head.weight is loaded.tok_emb.weight
    x = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, all_logits=True)[0], model(x, all_logits=True)[0])


def test_load_rejects_mismatched_weights(tmp_path):
    save_model(tiny_model(), tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"n_embd": 32', '"n_embd": 64')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path / "nowhere")

"""Serving decode speed on CPU for the 124m shape (random weights), measured in one run:

- core GPT with its KV cache vs full recompute (use_cache=False), at 128 / 512 / 1,000 tokens
  of context: decode tokens/s, time to first token, and the ratio (goal: >= 5x at 512);
- stretch: stock transformers `LlamaForCausalLM` with its own KV cache on the same weights
  (converted by the release key map), at the same contexts (goal: core >= HF at 512).

    python benchmarks/serve_decode.py [--contexts 128,512,1000] [--new-tokens 24]
                                      [--recompute-tokens 4] [--repeats 2] [--threads N] [--no-hf]

Best-of-repeats is reported for the KV-cache and HF runs (a single run for the slow full
recompute, which can only make the cache's ratio look smaller than it is).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.release.hf_export import core_to_hf


def time_stream(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s after the first token)."""
    t0 = time.perf_counter()
    t_first = None
    n = 0
    for _ in model.generate_stream(prompt, new_tokens, temperature=0.0, use_cache=use_cache):
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    assert n == new_tokens and t_first is not None
    return t_first - t0, (n - 1) / (t_end - t_first)


def hf_model(core: GPT):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = core.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden,
                      num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                      num_key_value_heads=c.n_head, head_dim=c.head_dim,
                      max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                      rope_theta=c.rope_theta, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(core_to_hf(core.state_dict(), c.n_layer), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def time_hf(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """HF generate with its KV cache, greedy, never stopping early."""
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)
    attn = torch.ones_like(prompt)
    t0 = time.perf_counter()
    model.generate(prompt, attention_mask=attn, max_new_tokens=1, min_new_tokens=1, **kw)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(prompt, attention_mask=attn, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    total = time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return ttft, (new_tokens - 1) / max(total - ttft, 1e-9)


@torch.no_grad()
def step_latency(core: GPT, hf, prompt: torch.Tensor, steps: int = 10) -> tuple[float, float]:
    """Median ms of one cached decode step at this context, core and HF interleaved step by
    step (the least noise-sensitive comparison on a shared machine)."""
    import statistics

    ctx = prompt.shape[1]
    cache = core.new_cache(1)
    core(prompt, cache=cache)
    pkv = hf(prompt, use_cache=True).past_key_values
    tok = torch.tensor([[5]])
    tc, th = [], []
    for _ in range(steps):
        cache.pos = ctx  # rewind: every step sees exactly `ctx` cached positions
        t = time.perf_counter()
        core(tok, cache=cache)
        tc.append(time.perf_counter() - t)
        t = time.perf_counter()
        hf(tok, past_key_values=pkv, use_cache=True)
        th.append(time.perf_counter() - t)
        pkv.crop(-1)
    return statistics.median(tc) * 1e3, statistics.median(th) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="128,512,1000")
    ap.add_argument("--new-tokens", type=int, default=24, help="tokens per KV-cache / HF run")
    ap.add_argument("--recompute-tokens", type=int, default=4, help="tokens per full-recompute run")
    ap.add_argument("--repeats", type=int, default=2, help="KV-cache and HF runs per context (best kept)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig()  # the 124m shape of SPEC §2
    model = GPT(cfg).eval()
    hf = None if args.no_hf else hf_model(model)
    contexts = [int(c) for c in args.contexts.split(",")]
    assert max(contexts) + args.new_tokens <= cfg.block_size, "context + new tokens must fit the block"
    print(f"124m shape, {model.num_params():,} params, fp32, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    warm = torch.randint(0, cfg.vocab_size, (1, 32))
    time_stream(model, warm, 4, True)  # warm-up: allocator, kernels
    if hf is not None:
        time_hf(hf, warm, 4)
    rows = []
    for ctx in contexts:
        prompt = torch.randint(4, cfg.vocab_size, (1, ctx), generator=torch.Generator().manual_seed(ctx))
        # Core and HF runs alternate and each keeps its best repeat, so load from other
        # processes on a shared machine hits both sides alike.
        core_runs, hf_runs = [], []
        for _ in range(args.repeats):
            core_runs.append(time_stream(model, prompt, args.new_tokens, use_cache=True))
            if hf is not None:
                hf_runs.append(time_hf(hf, prompt, args.new_tokens))
        ttft_c, tps_c = min(r[0] for r in core_runs), max(r[1] for r in core_runs)
        ttft_r, tps_r = time_stream(model, prompt, args.recompute_tokens, use_cache=False)
        row = {"context": ctx, "kv_tok_s": round(tps_c, 2), "recompute_tok_s": round(tps_r, 2),
               "kv_vs_recompute": round(tps_c / tps_r, 2), "ttft_s": round(ttft_c, 3),
               "recompute_ttft_s": round(ttft_r, 3)}
        if hf is not None:
            ttft_h, tps_h = min(r[0] for r in hf_runs), max(r[1] for r in hf_runs)
            ms_c, ms_h = step_latency(model, hf, prompt)
            row |= {"hf_kv_tok_s": round(tps_h, 2), "hf_ttft_s": round(ttft_h, 3),
                    "core_vs_hf": round(tps_c / tps_h, 2), "core_step_ms": round(ms_c, 1),
                    "hf_step_ms": round(ms_h, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    header = ["context", "kv tok/s", "recompute tok/s", "ratio", "TTFT s"] + \
             (["HF kv tok/s", "HF TTFT s", "core/HF", "step ms core", "step ms HF"] if hf is not None else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["context"], r["kv_tok_s"], r["recompute_tok_s"], f"{r['kv_vs_recompute']}x", r["ttft_s"]]
        if hf is not None:
            cells += [r["hf_kv_tok_s"], r["hf_ttft_s"], f"{r['core_vs_hf']}x", r["core_step_ms"], r["hf_step_ms"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    at512 = next((r for r in rows if r["context"] == 512), None)
    if at512:
        print(f"\ngoal  KV cache >= 5x full recompute at 512: {at512['kv_vs_recompute']}x -> "
              f"{'MET' if at512['kv_vs_recompute'] >= 5 else 'NOT MET'}")
        if hf is not None:
            print(f"stretch  core >= transformers LlamaForCausalLM at 512: {at512['core_vs_hf']}x -> "
                  f"{'MET' if at512['core_vs_hf'] >= 1 else 'NOT MET'} (median cached step: core "
                  f"{at512['core_step_ms']} ms vs HF {at512['hf_step_ms']} ms)")


if __name__ == "__main__":
    main()

"""Serving decode speed on CPU for the 124m shape (random weights), all measured in one run.

1. Continuous batching: aggregate tokens/s of the serving decoder (`BatchDecoder`) with 1, 4
   and 8 concurrent streams, each request generating the same fixed budget of tokens (never
   stopping early), and the 8-stream / 1-stream ratio (goal: >= 4x). The same decoder with
   plain `nn.Linear` weights (`prepack=False`, the matmul torch picks by default) runs beside
   it. Repeats go round every stream count and both weight layouts in turn, so load from
   other processes hits all of them alike; the best of the repeats is kept.
2. KV cache vs full recompute, and core vs stock transformers `LlamaForCausalLM` with its own
   KV cache (same weights, converted by the release key map), at 128 / 512 / 1,000 tokens of
   context. Recompute runs the same prepacked weights as the KV decoder, so that ratio is the
   cache's alone; the core KV decoder with plain weights is timed too. Every side is timed the
   same way: the same prompt, the same number of new tokens, greedy, one timestamp per token,
   and the best of the same number of repeats (lowest time to first token, highest decode
   tokens/s after the first token).

    python benchmarks/serve_decode.py [--streams 1,4,8] [--budget 64] [--prompt 16] [--contexts 128,512,1000]
                                      [--new-tokens 8] [--repeats 2] [--threads N] [--no-hf]
                                      [--no-plain] [--json PATH]

Set OMP_NUM_THREADS to the same value as --threads: every side then runs on those threads.

Writes the figures and the machine (CPU model, cores, torch threads, load) as JSON to --json
(default benchmarks/results/serve_decode.json) beside the printed tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import machine_info, machine_line, write_json  # noqa: E402
from wikigpt_core.generation import BatchDecoder, SamplingParams, Sequence  # noqa: E402
from wikigpt_core.generation.packed import decode_view  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402
from wikigpt_core.release.hf_export import core_to_hf  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "serve_decode.json"
NO_STOP = frozenset()  # random weights: every request runs its whole budget


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(4, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- 1. continuous batching ------------------------------------------------------------------

def batched_tok_s(model: GPT, streams: int, budget: int, prompt_len: int, prepack: bool = True) -> float:
    """Aggregate generated tokens/s for `streams` requests decoded together, prefill included
    (each request is admitted, prefilled and decoded to its budget, as the server does)."""
    dec = BatchDecoder(model, max_batch=streams, stop_ids=NO_STOP, prepack=prepack)
    dec.prepare()  # weights packed and cache allocated before the clock starts, as a running server has them
    seqs = [Sequence(random_prompt(prompt_len, model.config.vocab_size, k), SamplingParams(budget, 0.0, 1.0))
            for k in range(streams)]
    t0 = time.perf_counter()
    dec.run(seqs)
    seconds = time.perf_counter() - t0
    assert all(len(s.tokens) == budget for s in seqs)
    return streams * budget / seconds


# -- 2. one stream at a context: three decoders, one timing ---------------------------------

def serving_decoder(model: GPT, prepack: bool = True) -> BatchDecoder:
    """One stream's decoder, built and prepared once and reused by every run, as a server does."""
    dec = BatchDecoder(model, max_batch=1, stop_ids=NO_STOP, prepack=prepack)
    dec.prepare()
    return dec


def core_kv(dec: BatchDecoder, prompt: list[int], n: int) -> list[float]:
    """The serving decoder (ragged KV cache), one sequence; a timestamp per generated token."""
    seq = dec.add(Sequence(prompt, SamplingParams(n, 0.0, 1.0)))
    stamps = []
    while dec.busy:
        dec.step()
        stamps.append(time.perf_counter())
    assert len(seq.tokens) == n == len(stamps)
    return stamps


@torch.no_grad()
def core_recompute(model: GPT, prompt: list[int], n: int) -> list[float]:
    """No cache: every token is a full forward over the whole context so far (pass the same
    prepacked view the KV decoder runs, so the two differ by the cache alone)."""
    seq = torch.tensor([prompt])
    stamps = []
    for _ in range(n):
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        stamps.append(time.perf_counter())
    return stamps


@torch.no_grad()
def hf_kv(hf, prompt: list[int], n: int) -> list[float]:
    """transformers LlamaForCausalLM with its own DynamicCache: prefill, then one token a step."""
    out = hf(torch.tensor([prompt]), use_cache=True)
    stamps = [time.perf_counter()]
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    past = out.past_key_values
    for _ in range(n - 1):
        out = hf(nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        stamps.append(time.perf_counter())
    return stamps


def timed(fn, *args, n: int, repeats: int) -> dict[str, float]:
    """Best of `repeats`: lowest time to first token, highest decode tokens/s after it."""
    ttft, tps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stamps = fn(*args, n)
        ttft.append(stamps[0] - t0)
        tps.append((n - 1) / (stamps[-1] - stamps[0]))
    return {"ttft_s": round(min(ttft), 4), "decode_tok_s": round(max(tps), 2)}


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


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,4,8", help="concurrent streams to measure")
    ap.add_argument("--budget", type=int, default=64, help="tokens each batched request generates")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens of each batched request")
    ap.add_argument("--contexts", default="128,512,1000")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens per run, every side alike")
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement (best kept), every side alike")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-weights decoder runs")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig()  # the 124m shape
    model = GPT(cfg).eval()
    hf = None if args.no_hf else hf_model(model)
    contexts = [int(c) for c in args.contexts.split(",")]
    streams = [int(s) for s in args.streams.split(",")]
    assert max(contexts) + args.new_tokens <= cfg.block_size, "context + new tokens must fit the block"
    machine = machine_info()
    print(f"124m shape, {model.num_params():,} params, fp32, random weights")
    print(machine_line(machine), flush=True)
    layouts = {"prepacked": True} if args.no_plain else {"prepacked": True, "plain": False}
    for prepack in layouts.values():
        batched_tok_s(model, 2, 4, 16, prepack)  # warm-up: allocator, kernels

    got: dict[tuple[str, int], list[float]] = {(k, n): [] for k in layouts for n in streams}
    for r in range(args.repeats):  # round robin: every setting sees the same load
        for n in streams:
            for name, prepack in layouts.items():
                got[name, n].append(batched_tok_s(model, n, args.budget, args.prompt, prepack))
                print(f"  repeat {r + 1}, {n} streams, {name}: {got[name, n][-1]:.1f} tok/s", flush=True)
    batching = []
    for n in streams:
        b = {"streams": n}
        for name in layouts:
            b[f"{name}_tok_s" if name != "prepacked" else "aggregate_tok_s"] = round(max(got[name, n]), 2)
        batching.append(b)
    base = next((b for b in batching if b["streams"] == 1), None)
    for b in batching:
        b["vs_1_stream"] = round(b["aggregate_tok_s"] / base["aggregate_tok_s"], 2) if base else None
        if "plain_tok_s" in b:
            b["plain_vs_1_stream"] = round(b["plain_tok_s"] / base["plain_tok_s"], 2) if base else None
            b["prepacked_vs_plain"] = round(b["aggregate_tok_s"] / b["plain_tok_s"], 2)

    contexts_out = []
    kv_dec, packed_model = serving_decoder(model), decode_view(model)
    kv_plain_dec = None if args.no_plain else serving_decoder(model, prepack=False)
    for ctx in contexts:
        prompt = random_prompt(ctx, cfg.vocab_size, ctx)
        row = {"context": ctx, "kv": None, "recompute": None, "hf_kv": None}
        # The sides alternate repeat by repeat, so load from other processes hits all alike.
        sides = {"kv": (core_kv, kv_dec), "recompute": (core_recompute, packed_model)}
        if not args.no_plain:
            sides["kv_plain"] = (core_kv, kv_plain_dec)
        if hf is not None:
            sides["hf_kv"] = (hf_kv, hf)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for _ in range(args.repeats):
            for name, (fn, m) in sides.items():
                runs[name].append(timed(fn, m, prompt, n=args.new_tokens, repeats=1))
        for name, rs in runs.items():
            row[name] = {"ttft_s": min(r["ttft_s"] for r in rs),
                         "decode_tok_s": max(r["decode_tok_s"] for r in rs)}
        row["kv_vs_recompute"] = round(row["kv"]["decode_tok_s"] / row["recompute"]["decode_tok_s"], 2)
        if "kv_plain" in row:
            row["kv_prepacked_vs_plain"] = round(row["kv"]["decode_tok_s"] / row["kv_plain"]["decode_tok_s"], 2)
        if hf is not None:
            row["core_vs_hf"] = round(row["kv"]["decode_tok_s"] / row["hf_kv"]["decode_tok_s"], 2)
        contexts_out.append(row)
        print(f"  context {ctx}: {row}", flush=True)

    print(f"\nContinuous batching: {args.budget} tokens per request, {args.prompt}-token prompts, "
          f"best of {args.repeats}, {torch.get_num_threads()} torch threads")
    header = ["streams", "aggregate tok/s", "vs 1 stream"]
    if not args.no_plain:
        header += ["plain weights tok/s", "plain vs 1 stream", "prepacked/plain"]
    rows = []
    for b in batching:
        cells = [b["streams"], b["aggregate_tok_s"], f"{b['vs_1_stream']}x"]
        if not args.no_plain:
            cells += [b["plain_tok_s"], f"{b['plain_vs_1_stream']}x", f"{b['prepacked_vs_plain']}x"]
        rows.append(cells)
    print(table(header, rows))
    print(f"\nOne stream: {args.new_tokens} new tokens per run, best of {args.repeats}, every side alike")
    header = ["context", "KV tok/s", "recompute tok/s", "KV/recompute", "KV TTFT s", "recompute TTFT s"]
    if not args.no_plain:
        header += ["KV plain tok/s", "KV plain TTFT s", "prepacked/plain"]
    if hf is not None:
        header += ["HF KV tok/s", "HF TTFT s", "core/HF"]
    rows = []
    for r in contexts_out:
        cells = [r["context"], r["kv"]["decode_tok_s"], r["recompute"]["decode_tok_s"],
                 f"{r['kv_vs_recompute']}x", r["kv"]["ttft_s"], r["recompute"]["ttft_s"]]
        if not args.no_plain:
            cells += [r["kv_plain"]["decode_tok_s"], r["kv_plain"]["ttft_s"], f"{r['kv_prepacked_vs_plain']}x"]
        if hf is not None:
            cells += [r["hf_kv"]["decode_tok_s"], r["hf_kv"]["ttft_s"], f"{r['core_vs_hf']}x"]
        rows.append(cells)
    print(table(header, rows))
    at8 = next((b for b in batching if b["streams"] == 8), None)
    if at8 and base:
        print(f"\ngoal  8 streams >= 4x one stream: {at8['vs_1_stream']}x -> "
              f"{'MET' if at8['vs_1_stream'] >= 4 else 'NOT MET'}")
    settings = {k: getattr(args, k) for k in ("streams", "budget", "prompt", "contexts", "new_tokens",
                                              "repeats", "threads", "no_plain")}
    path = write_json(args.json, "benchmarks/serve_decode.py", machine,
                      {"settings": settings, "batching": batching, "contexts": contexts_out})
    print(f"figures: {path}")


if __name__ == "__main__":
    main()

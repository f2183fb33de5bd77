"""Runs inside a Python that has llama-cpp-python (usually its own venv), never the project's:
it imports llama_cpp, numpy and the standard library only, so it is started by file path.

    python llamacpp_worker.py REQUEST.json REPLY.json

(The reply goes to a file: llama.cpp's C code may print on stdout.)

Requests:
- {"op": "quantize", "src": F16.gguf, "dst": OUT.gguf, "ftype": "Q4_K_M", "threads": N}:
  llama.cpp's own quantizer (`llama_model_quantize`), as `llama-quantize` runs it.
- {"op": "chat", "model": X.gguf, "n_ctx": N, "threads": N, "messages": [...], "max_tokens": N}:
  the chat reply alone.
- {"op": "measure", "model": X.gguf, "n_ctx": N, "threads": N, "windows": [[ids]...],
   "messages": [...], "max_tokens": N, "decode_prompt": [ids], "decode_tokens": N}:
  perplexity over the windows (each predicts its tokens 1..n from the ones before), a chat
  reply rendered with the GGUF's own chat template, and greedy decode speed.
"""
from __future__ import annotations

import ctypes
import json
import math
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def quantize(src: str, dst: str, ftype: str, threads: int) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) returned {rc}")
    return {"dst": dst, "llama_cpp_python": llama_cpp.__version__}


def _load(path: str, n_ctx: int, threads: int, logits_all: bool) -> Llama:
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads or None, logits_all=logits_all,
                 seed=0, verbose=False)


def perplexity(llm: Llama, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL), every window weighing the same (as the core's perplexity)."""
    losses = []
    for ids in windows:
        llm.reset()
        llm.eval(ids[:-1])
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        logz = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
        losses.append(float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).mean()))
    return math.exp(min(sum(losses) / len(losses), 709.0))


def chat(llm: Llama, messages: list[dict], max_tokens: int) -> dict:
    """Greedy reply through llama.cpp's chat path (the GGUF's embedded chat template)."""
    out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
    choice = out["choices"][0]
    return {"content": choice["message"]["content"] or "", "finish_reason": choice["finish_reason"],
            "completion_tokens": out["usage"]["completion_tokens"]}


def decode_speed(llm: Llama, prompt: list[int], n: int) -> dict:
    """Greedy decoding speed after the prompt: 1 / the median time per token (the prefill is
    not counted; the median keeps a busy machine's stalls out of the figure)."""
    llm.reset()
    stamps = []
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) > n:
            break
    # The first token comes out of the prefill: time the n that follow it.
    per_token = float(np.median(np.diff(stamps)))
    return {"decode_tok_s": 1.0 / per_token, "decoded": n,
            "decode_mean_tok_s": n / (stamps[-1] - stamps[0])}


def measure(req: dict) -> dict:
    llm = _load(req["model"], req["n_ctx"], req["threads"], logits_all=True)
    reply = {"perplexity": perplexity(llm, req["windows"])}
    del llm
    llm = _load(req["model"], req["n_ctx"], req["threads"], logits_all=False)
    reply["chat"] = chat(llm, req["messages"], req["max_tokens"])  # the check's probe, too
    reply.update(decode_speed(llm, req["decode_prompt"], req["decode_tokens"]))
    reply["llama_cpp_python"] = llama_cpp.__version__
    return reply


def main() -> None:
    req = json.loads(open(sys.argv[1], encoding="utf-8").read())
    if req["op"] == "quantize":
        reply = quantize(req["src"], req["dst"], req["ftype"], req["threads"])
    elif req["op"] == "measure":
        reply = measure(req)
    elif req["op"] == "chat":
        reply = chat(_load(req["model"], req["n_ctx"], req["threads"], logits_all=False),
                     req["messages"], req["max_tokens"])
    else:
        raise SystemExit(f"unknown op {req['op']!r}")
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(reply, f)


if __name__ == "__main__":
    main()

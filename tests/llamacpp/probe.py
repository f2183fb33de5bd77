"""Run inside the llama.cpp venv (it imports llama_cpp, not the project): load a GGUF with
llama.cpp itself and report, as JSON on stdout, what it computes for the given token ids.

    python probe.py MODEL.gguf REQUEST.json

REQUEST: {"ids": [...], "greedy_prompt": [...], "greedy_steps": N, "text": "..."}.
Reply: {"logits": [[...] per position], "greedy": [ids], "tokenized": [ids of text],
        "n_vocab": int, "n_ctx_train": int}.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main() -> None:
    model_path, request_path = sys.argv[1], sys.argv[2]
    req = json.loads(open(request_path).read())
    llm = Llama(model_path=model_path, logits_all=True, n_ctx=req.get("n_ctx", 0), n_threads=1,
                verbose=False)
    llm.reset()
    llm.eval(req["ids"])
    logits = np.asarray(llm.scores[: len(req["ids"])], dtype=np.float64)

    llm.reset()
    llm.eval(req["greedy_prompt"])
    greedy = []
    for _ in range(req["greedy_steps"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    tokenized = llm.tokenize(req["text"].encode(), add_bos=False, special=True) if req.get("text") else []
    json.dump({"logits": logits.tolist(), "greedy": greedy, "tokenized": tokenized,
               "n_vocab": llm.n_vocab(), "n_ctx_train": int(llm.metadata.get("llama.context_length", 0))}, sys.stdout)


if __name__ == "__main__":
    main()

"""Sample generations logged during training (a quick look at what the model says)."""
from __future__ import annotations

import torch

from wikigpt_core.chat import render_prompt


def chat_sampler(messages: list[dict], tok, device, max_new_tokens: int = 64):
    """Greedy answer to a conversation (its trailing assistant turn, if any, is dropped)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    prompt = render_prompt(messages, tok)

    def sample(model) -> str:
        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        out = model.generate(idx, max_new_tokens, temperature=0.0, stop_ids=[tok.end_id])
        return tok.decode(out[0, len(prompt):].tolist())

    return sample


def document_sampler(tok, device, seed: int, max_new_tokens: int = 32):
    """Continue a document start (<|endoftext|>, id 0): decoded text with a tokenizer, else ids."""
    def sample(model) -> str:
        g = torch.Generator(device=device).manual_seed(seed)
        prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
        ids = model.generate(prompt, max_new_tokens, temperature=0.8, top_p=0.95, generator=g)[0, 1:].tolist()
        return tok.decode(ids) if tok is not None else " ".join(map(str, ids))

    return sample

"""Sample generations logged during training (a quick look at what the model says), through
the generation module (its cropping rule and stop tokens)."""
from __future__ import annotations

from wikigpt_core.generation import SamplingParams, generate_chat, generate_ids


def chat_sampler(messages: list[dict], tok, device, max_new_tokens: int = 64):
    """Greedy answer to a conversation (its trailing assistant turn, if any, is dropped)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    params = SamplingParams(max_new_tokens, temperature=0.0)

    def sample(model) -> str:
        return generate_chat(model, tok, [messages], [params])[0].text

    return sample


def document_sampler(tok, device, seed: int, max_new_tokens: int = 32):
    """Continue a document start (<|endoftext|>, id 0): decoded text with a tokenizer, else ids."""
    params = SamplingParams(max_new_tokens, temperature=0.8, top_p=0.95, seed=seed)

    def sample(model) -> str:
        seq = generate_ids(model, [[0]], [params], tok=tok)[0]
        return seq.text if tok is not None else " ".join(map(str, seq.tokens))

    return sample

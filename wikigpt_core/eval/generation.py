"""Chat replies from a checkpoint: render the SPEC §3 prompt, sample, stop on <|end|>."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from wikigpt_core.chat import render_prompt
from wikigpt_core.tokenizer import WikiTokenizer


def pick_device() -> str:
    """CUDA when there is a GPU (the eval box), else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Reply:
    text: str
    stopped: bool
    """The model emitted <|end|> within the new-token budget."""
    new_tokens: int


def generate_replies(model, tok: WikiTokenizer, conversations: list[list[dict[str, str]]], *,
                     max_new_tokens: int, temperature: float, top_p: float, seed: int,
                     samples: int = 1) -> list[list[Reply]]:
    """`samples` replies per conversation (a list per conversation, in order).

    Each conversation gets its own generator seeded from (seed, index), so a reply does not
    depend on which other prompts ran. A prompt longer than block_size - max_new_tokens keeps
    its first token (<|user|>) and its last tokens (the question and <|assistant|> sit at the end)."""
    model.eval()
    device = next(model.parameters()).device
    budget = max(1, model.config.block_size - max_new_tokens)
    out: list[list[Reply]] = []
    with _decode_threads(model, device):
        for i, messages in enumerate(conversations):
            ids = render_prompt(messages, tok)
            if len(ids) > budget:
                ids = ids[:1] + ids[len(ids) - budget + 1:]
            idx = torch.tensor([ids] * samples, dtype=torch.long, device=device)  # same length: batchable
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
            with torch.no_grad():
                full = model.generate(idx, max_new_tokens, temperature=temperature, top_p=top_p,
                                      stop_ids=[tok.end_id], use_cache=True, generator=gen)
            out.append([_reply(row[len(ids):].tolist(), tok) for row in full])
    return out


@contextmanager
def _decode_threads(model, device: torch.device) -> Iterator[None]:
    """One CPU thread while decoding a small model: each step is a few tiny matmuls, and
    intra-op threads then cost more in synchronization than they save (measured ~10x slower
    with 2 threads on a busy 2-core box). Restored afterwards."""
    small = device.type == "cpu" and model.config.n_embd <= 256
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def _reply(new: list[int], tok: WikiTokenizer) -> Reply:
    stopped = tok.end_id in new
    body = new[:new.index(tok.end_id)] if stopped else new
    return Reply(tok.decode(body).strip(), stopped, len(body) + int(stopped))

"""The blocking entry points for batch jobs (`generate_ids`, `generate_chat`), and chat replies
for evaluation and preference sampling: several seeded samples per conversation, all decoded
together."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from wikigpt_core.generation.batch import BatchDecoder, SamplingParams, Sequence, decode_threads
from wikigpt_core.generation.prompts import crop_conversation, prompt_budget


def pick_device() -> str:
    """CUDA when there is a GPU (the eval box), else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Reply:
    text: str
    stopped: bool
    """The model produced a stop token (<|end|>) within the new-token budget."""
    new_tokens: int


def sample_seed(seed: int, conversation: int, sample: int) -> int:
    """Each reply's own generator seed, so a reply does not depend on which others ran."""
    return (seed * 1_000_003 + conversation) * 1_009 + sample


def generate_replies(model, tok, conversations: list[list[dict[str, str]]], *,
                     max_new_tokens: int, temperature: float, top_p: float, seed: int,
                     samples: int = 1, max_batch: int = 16) -> list[list[Reply]]:
    """`samples` replies per conversation (a list per conversation, in order), decoded in
    batches of up to `max_batch` sequences."""
    convs = [c for c in conversations for _ in range(samples)]
    params = [SamplingParams(max_new_tokens, temperature, top_p, sample_seed(seed, i, j))
              for i in range(len(conversations)) for j in range(samples)]
    seqs = generate_chat(model, tok, convs, params, max_batch=max_batch)
    replies = [Reply(s.text.strip(), s.finish_reason == "stop", len(s.tokens)) for s in seqs]
    return [replies[i * samples:(i + 1) * samples] for i in range(len(conversations))]


def generate_ids(model, prompts: list[list[int]], params: list[SamplingParams], *, tok=None,
                 max_batch: int = 8) -> list[Sequence]:
    """Continue each prompt with its params (batched); returns the finished sequences. A batch
    job: prompts that join together are prefilled together (`BatchDecoder(prefill_together)`)."""
    seqs = [Sequence(list(p), prm, tok) for p, prm in zip(prompts, params, strict=True)]
    # Decode with the plain module: a torch.compile wrapper would recompile for every new
    # sequence length, a DDP wrapper would try to synchronise. Both keep it as an attribute.
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    training = model.training
    model.eval()
    try:
        with decode_threads(model):
            return BatchDecoder(model, max_batch=max_batch, prefill_together=True).run(seqs)
    finally:
        model.train(training)


def generate_chat(model, tok, conversations: list[list[dict[str, str]]], params: list[SamplingParams],
                  *, max_batch: int = 8) -> list[Sequence]:
    """Reply to each conversation: cropped by the one rule, stopped by the one stop set."""
    block = int(model.config.block_size)
    prompts = [crop_conversation(c, tok, prompt_budget(block, p.max_new_tokens))[0]
               for c, p in zip(conversations, params, strict=True)]
    return generate_ids(model, prompts, params, tok=tok, max_batch=max_batch)

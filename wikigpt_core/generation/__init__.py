"""The one place where text is generated: serving, evaluation, preference sampling and
training samples all come through here.

- `prompts`: the stop tokens and the prompt-cropping rule;
- `sampling`: greedy / temperature / nucleus choice, per-sequence seeding, log-probabilities;
- `text`: UTF-8-safe incremental text and stop strings;
- `batch`: the continuous-batching decoder over the model's ragged KV cache;
- `packed`: the model with oneDNN-prepacked linear weights, what the decoder runs on CPU;
- `replies`: seeded chat replies for evaluation and preference sampling;
- `generate_chat` / `generate_ids` below: the blocking entry points for batch jobs.
"""
from __future__ import annotations

from wikigpt_core.generation.batch import BatchDecoder, SamplingParams, Sequence, decode_threads
from wikigpt_core.generation.replies import Reply, generate_replies, pick_device
from wikigpt_core.generation.prompts import (STOP_IDS, crop_conversation, crop_ids, prompt_budget,
                                             stop_ids)
from wikigpt_core.generation.sampling import TokenLogprob, sample_next
from wikigpt_core.generation.text import IncrementalDecoder, StopText

__all__ = ["BatchDecoder", "SamplingParams", "Sequence", "STOP_IDS", "TokenLogprob",
           "IncrementalDecoder", "StopText", "crop_conversation", "crop_ids", "decode_threads",
           "generate_chat", "generate_ids", "generate_replies", "pick_device", "prompt_budget",
           "Reply", "sample_next", "stop_ids"]


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

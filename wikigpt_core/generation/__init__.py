"""The one place where text is generated: serving, evaluation, preference sampling and
training samples all come through here.

- `prompts`: the stop tokens and the prompt-cropping rule;
- `sampling`: greedy / temperature / nucleus choice, per-sequence seeding, log-probabilities;
- `text`: UTF-8-safe incremental text and stop strings;
- `batch`: the continuous-batching decoder over the model's ragged KV cache;
- `packed`: the model with oneDNN-prepacked linear weights, what the decoder runs on CPU;
- `replies`: the blocking entry points for batch jobs (`generate_ids`, `generate_chat`) and
  seeded chat replies for evaluation and preference sampling.
"""
from __future__ import annotations

from wikigpt_core.generation.batch import BatchDecoder, SamplingParams, Sequence, decode_threads
from wikigpt_core.generation.replies import (Reply, generate_chat, generate_ids, generate_replies,
                                             pick_device)
from wikigpt_core.generation.prompts import (STOP_IDS, crop_conversation, crop_ids, prompt_budget,
                                             stop_ids)
from wikigpt_core.generation.sampling import TokenLogprob, sample_next
from wikigpt_core.generation.text import IncrementalDecoder, StopText

__all__ = ["BatchDecoder", "SamplingParams", "Sequence", "STOP_IDS", "TokenLogprob",
           "IncrementalDecoder", "StopText", "crop_conversation", "crop_ids", "decode_threads",
           "generate_chat", "generate_ids", "generate_replies", "pick_device", "prompt_budget",
           "Reply", "sample_next", "stop_ids"]


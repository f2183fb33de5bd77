"""Chat replies from a checkpoint: the generation module's `generate_replies` (its cropping
rule, its stop tokens, its batched KV-cache decode), under the name the eval code uses; and the
runtime that evaluation and preference sampling run their model passes in."""
from __future__ import annotations

import torch

from wikigpt_core.generation.replies import Reply, generate_replies, pick_device, sample_seed
from wikigpt_core.train.runtime import Runtime

__all__ = ["Reply", "autocast_label", "generate_replies", "inference_runtime", "pick_device", "sample_seed"]


def inference_runtime(precision: str = "auto") -> Runtime:
    """Where model passes that train nothing run: the GPU when there is one (the launched box),
    and its autocast as training resolves it: "auto" is bf16 on CUDA, float32 elsewhere;
    "bf16" forces autocast on any device (how the GPU path is tested on CPU)."""
    return Runtime(torch.device(pick_device())).with_precision(precision)


def autocast_label(runtime: Runtime) -> str:
    """"bfloat16" or "float32": what a stage's model passes ran in, for its stats."""
    dtype = runtime.autocast_dtype
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"

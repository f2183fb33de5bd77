"""Chat replies from a checkpoint: the generation module's `generate_replies` (its cropping
rule, its stop tokens, its batched KV-cache decode), under the name the eval code uses."""
from wikigpt_core.generation.replies import Reply, generate_replies, pick_device, sample_seed

__all__ = ["Reply", "generate_replies", "pick_device", "sample_seed"]

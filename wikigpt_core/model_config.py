"""The model's shape: one dataclass, importable without torch (data workers read it).

The fields and the derived sizes (head_dim, SwiGLU hidden) are described in
docs/reference.md, "Model shape".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class GPTConfig:
    """Model shape. Defaults are WikiGPT-124M (docs/reference.md, "Model shape")."""

    vocab_size: int = 32_768
    """Token vocabulary; must match the tokenizer."""
    block_size: int = 1_024
    """Context length in tokens."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    """Residual width; head_dim = n_embd // n_head."""
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    mlp_multiple_of: int = 256
    """SwiGLU hidden = 8/3 * n_embd rounded up to this multiple (2,048 at width 768)."""
    head_dim: int = field(init=False)
    mlp_hidden: int = field(init=False)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self.head_dim = self.n_embd // self.n_head
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        raw = math.ceil(8 * self.n_embd / 3)
        self.mlp_hidden = self.mlp_multiple_of * math.ceil(raw / self.mlp_multiple_of)

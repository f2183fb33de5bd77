"""WikiGPT: a Llama-style decoder on a GPT-2-small skeleton (docs/reference.md, "Model shape").

Pre-norm blocks of RMSNorm -> attention (fused qkv, RoPE, SDPA) and RMSNorm -> SwiGLU, a final
RMSNorm and an LM head tied to the token embedding. Parameter names and layouts map one-to-one
onto Hugging Face `LlamaForCausalLM` (q/k/v are the row blocks of `attn.qkv.weight`; RoPE
uses the "rotate half" pairing i <-> i + head_dim/2), so the HF export needs no permutation.

Extras beyond the course:
- `forward(..., cache=...)` over a `KVCache` (`new_cache`) or a `RaggedKVCache`
  (`new_ragged_cache`): the prompt is prefilled once, then one token per step; the decoding
  loop itself lives in `wikigpt_core.generation`.
- Document masking for packed SFT: `forward(..., doc_ids=...)` blocks attention across
  example boundaries and restarts RoPE positions at each example; with a `block_mask` from
  `doc_attention.document_block_mask` it runs through FlexAttention, else a dense mask.
- `head="loss"` / `head="token_logps"`: the head and the loss in row chunks
  (`fused_head`), so training never materialises the (B*T, V) float32 logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wikigpt_core.doc_attention import BlockMask, flex_kernel
from wikigpt_core.fused_head import IGNORE_INDEX, chunked_cross_entropy, chunked_token_logps
from wikigpt_core.model_config import GPTConfig

HEADS = ("logits", "loss", "token_logps")
"""What `GPT.forward` computes after the final norm (see its docstring)."""


class RMSNorm(nn.Module):
    """HF Llama RMSNorm: normalise in float32, cast back, then scale by the gain."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (length, head_dim) in float32, laid out as cat(freqs, freqs) (HF)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, hd) by cos/sin broadcastable to it; computed in float32."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)  # rotate_half
    return (xf * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Per-layer key/value buffers of shape (B, H, block_size, hd), filled left to right.

    `pos` is how many positions are filled. Built by `GPT.new_cache`; advanced by
    `GPT.forward` once all layers have written the new positions."""

    def __init__(self, config: GPTConfig, batch: int, device, dtype) -> None:
        shape = (batch, config.n_head, config.block_size, config.head_dim)
        # Uninitialised: only positions [0, pos) are ever read.
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.capacity = config.block_size
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, H, T, hd) at [pos, pos+T); return keys/values for [0, pos+T)."""
        end = self.pos + k.shape[2]
        assert end <= self.capacity, "KV cache overflow; the caller must re-prefill"
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RaggedKVCache:
    """Key/value buffers for rows of different lengths, for continuous batching.

    Row r holds positions [0, lengths[r]). A forward over this cache feeds T new tokens to each
    of the rows [0, rows), row r's at positions lengths[r] .. lengths[r] + T - 1, with the
    attention mask hiding every other row's padding. A row is filled by prefilling through
    `row_cache(slot)` (a plain `KVCache` viewing that row's buffers, so the prefill is exactly
    the batch-1 computation); `move_row` compacts rows when a sequence leaves."""

    def __init__(self, config: GPTConfig, rows: int, device, dtype) -> None:
        shape = (rows, config.n_head, config.block_size, config.head_dim)
        # Zeros, not empty: masked positions get weight 0, and 0 * NaN garbage would be NaN.
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.capacity = config.block_size
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.rows = 0
        """Rows [0, rows) take part in the next forward."""
        self._pos: torch.Tensor | None = None
        self._end = 0

    def row_cache(self, slot: int) -> KVCache:
        """An empty single-row `KVCache` whose buffers are this cache's row `slot`."""
        view = KVCache.__new__(KVCache)
        view.k = [k[slot:slot + 1] for k in self.k]
        view.v = [v[slot:slot + 1] for v in self.v]
        view.capacity, view.pos = self.capacity, 0
        return view

    def move_row(self, src: int, dst: int) -> None:
        n = int(self.lengths[src])
        for buf in (*self.k, *self.v):
            buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst] = n

    def layout(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids (rows, T) of the new tokens and the mask (rows, 1, T, end), True = may
        attend, where end is the longest row after this step."""
        start = self.lengths[:self.rows]
        pos = start[:, None] + torch.arange(T, device=start.device)
        self._end = int(start.max()) + T
        if self._end > self.capacity:
            raise ValueError(f"a row would reach {self._end} tokens; block_size is {self.capacity}")
        keys = torch.arange(self._end, device=start.device)
        self._pos = pos
        return pos, (keys[None, None, :] <= pos[:, :, None]).unsqueeze(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (rows, H, T, hd) at each row's positions; return keys/values [0, end)."""
        n, T = k.shape[0], k.shape[2]
        rows = torch.arange(n, device=k.device)[:, None].expand(n, T)
        # Advanced indices around a slice put their dims first: the target is (n, T, H, hd).
        self.k[layer][rows, :, self._pos] = k.transpose(1, 2)
        self.v[layer][rows, :, self._pos] = v.transpose(1, 2)
        return self.k[layer][:n, :, :self._end], self.v[layer][:n, :, :self._end]

    def advance(self, T: int) -> None:
        self.lengths[:self.rows] += T


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = config.n_head, config.head_dim, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # rows: q, k, v
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, hd)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.pos if mask is None else 0  # a ragged cache always brings its mask
            k, v = cache.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if BlockMask is not None and isinstance(mask, BlockMask):
            assert dropout == 0.0, "FlexAttention has no attention dropout"
            # Contiguous inputs: inside a compiled graph the CPU lowering of torch <= 2.13 reads
            # the transposed views with the wrong strides; compiled, RoPE writes them this way.
            y = flex_kernel()(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=mask)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif past == 0 or T == 1:
            # Prefill from an empty cache is plain causal; a single new token sees everything.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=dropout)
        else:
            # T new queries after `past` cached positions: causal, aligned bottom-right.
            allowed = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, mask, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) restarting at 0 at each segment of `doc_ids` (B, T)."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    seg_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
    return idx - seg_start


def document_layout(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From per-position segment ids (B, T) build the dense attention mask (B, 1, T, T), True =
    may attend (causal and same segment), and the positions of `document_positions`. The
    reference for FlexAttention's BlockMask, and the path where FlexAttention cannot train."""
    T = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal).unsqueeze(1), document_positions(doc_ids)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one tensor, counted once
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
        # Derived from the config, so kept out of checkpoints (persistent=False).
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        resid_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:  # the two matrices per block that write into the residual
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters with the tied head counted once (110,119,680 for 124m)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int = 1) -> KVCache:
        """An empty cache in the dtype attention will produce (the autocast dtype if active)."""
        p = self.tok_emb.weight
        dtype = p.dtype
        if torch.is_autocast_enabled(p.device.type):
            dtype = torch.get_autocast_dtype(p.device.type)
        return KVCache(self.config, batch, p.device, dtype)

    def new_ragged_cache(self, rows: int) -> RaggedKVCache:
        """An empty ragged cache for up to `rows` concurrent sequences (continuous batching)."""
        cache = self.new_cache(0)  # device and dtype, decided the same way
        return RaggedKVCache(self.config, rows, cache.k[0].device, cache.k[0].dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                doc_ids: torch.Tensor | None = None, cache: KVCache | RaggedKVCache | None = None,
                all_logits: bool = False, block_mask=None, head: str = "logits"):
        """idx (B, T) token ids; targets (B, T) next-token ids aligned with idx (-100 = ignore).

        Returns (logits, loss). With targets: logits (B, T, V) and the mean cross-entropy over
        non-ignored positions (computed in float32). Without: logits of the last position only,
        (B, 1, V), unless `all_logits`. `doc_ids` (B, T) enables document masking for packed
        sequences; `cache` runs incremental decoding (positions continue at `cache.pos`, or per
        row for a `RaggedKVCache`, whose rows [0, cache.rows) must match idx's batch).
        `block_mask` (a FlexAttention BlockMask built from the same doc_ids) replaces the
        dense document mask. With targets, `head` picks what is computed: "logits" (the
        above), "loss" (None, the same loss from a chunked head: no whole logits) or
        "token_logps" ((B, T) float32 log p(target), 0 where ignored; None)."""
        B, T = idx.shape
        ragged = isinstance(cache, RaggedKVCache)
        start = cache.pos if cache is not None and not ragged else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}")
        mask = None
        if doc_ids is not None:
            assert cache is None, "document masking is a training path; no KV cache"
            if block_mask is not None:
                mask, pos = block_mask, document_positions(doc_ids)
            else:
                mask, pos = document_layout(doc_ids)
            cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)  # (B,1,T,hd)
        elif ragged:
            assert cache.rows == B, f"ragged cache has {cache.rows} rows, the batch {B}"
            pos, mask = cache.layout(T)
            cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)
        else:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, hd)
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if ragged:
            cache.advance(T)
        elif cache is not None:
            cache.pos += T
        x = self.norm(x)
        if targets is None:
            logits = self.lm_head(x if all_logits else x[:, -1:, :])  # inference: last only
            return logits, None
        if head == "loss":
            return None, chunked_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
        if head == "token_logps":
            logps = chunked_token_logps(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
            return logps.view(B, T), None
        assert head == "logits", f"head must be one of {HEADS}, got {head!r}"
        logits = self.lm_head(x)  # (B, T, V)
        loss = token_loss(logits, targets)
        return logits, loss


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (float32) over positions whose target is not -100; 0 if none are."""
    flat = targets.reshape(-1)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat,
                             ignore_index=IGNORE_INDEX, reduction="sum")
    count = (flat != IGNORE_INDEX).sum().clamp(min=1)
    return losses / count

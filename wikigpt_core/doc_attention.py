"""Document-causal attention for packed blocks through FlexAttention.

A packed SFT block holds several examples; a position may attend to earlier positions of its
own example only. As a dense boolean mask (B, 1, T, T) that rules out SDPA's flash kernel and
computes every one of the T x T scores. FlexAttention instead takes a `BlockMask`: per tile of
FLEX_BLOCK x FLEX_BLOCK positions, whether it is empty (skipped), full (no mask applied) or
partial (the mask function evaluated); the causal upper half and the cross-document tiles are
never computed. The BlockMask is built once per micro-batch, outside the compiled model, from
the documents' ids, and every layer shares it.

Where it runs. FlexAttention is fast only compiled (`torch.compile(flex_attention)`, Triton on
CUDA). Torch up to 2.13 has no CPU backward for it, so on CPU training keeps the dense mask
(`model.document_layout`), which stays the reference the tests compare against. A torch without
`torch.nn.attention.flex_attention` (it exists since 2.5; 2.11-2.13 all have it) falls back to
the dense mask too.
"""
from __future__ import annotations

import torch

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # a torch without FlexAttention: packed SFT uses the dense mask
    BlockMask = create_block_mask = flex_attention = None

FLEX_BLOCK = 128
"""Tile edge of the BlockMask (FlexAttention's default, the Triton kernel's tile)."""


def flex_available() -> bool:
    return flex_attention is not None


def use_flex(device: torch.device) -> bool:
    """Whether packed blocks on `device` train through FlexAttention (CUDA with FlexAttention);
    elsewhere they take the dense mask (see the module docstring)."""
    return flex_available() and torch.device(device).type == "cuda"


def document_causal(doc_ids: torch.Tensor):
    """FlexAttention mask function: query q may see key kv of the same document, at or before
    it. Padding (id -1) is its own document, as in the dense mask."""
    def mask_mod(b, h, q, kv):
        return (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)
    return mask_mod


def document_block_mask(doc_ids: torch.Tensor, block: int = FLEX_BLOCK):
    """The BlockMask of document-causal attention for `doc_ids` (B, T), on its device."""
    if not flex_available():
        raise RuntimeError("this torch has no torch.nn.attention.flex_attention; packed "
                           "blocks need the dense mask (pass no block_mask to the model)")
    B, T = doc_ids.shape
    return create_block_mask(document_causal(doc_ids), B, None, T, T, device=doc_ids.device,
                             BLOCK_SIZE=block)


def blocks_skipped(block_mask) -> float:
    """Share of the mask's tiles FlexAttention skips (0..1): causal and cross-document."""
    return float(block_mask.sparsity()) / 100.0


# `flex_attention` compiled for the process (torch.compile is lazy: nothing is built until the
# first call, and kernels are generated per shape). Inside an already compiled model dynamo
# inlines it; alone it must still be compiled, because the uncompiled FlexAttention computes
# the full score matrix in Python.
_COMPILED_FLEX = torch.compile(flex_attention, dynamic=False) if flex_attention is not None else None


def flex_kernel():
    """The FlexAttention callable the model uses (a seam for the CPU gradient test: torch up to
    2.13 differentiates only its uncompiled form on CPU)."""
    return _COMPILED_FLEX

"""CPU decoding with prepacked linear weights.

A decode step multiplies a few rows (one per live sequence) by every weight matrix. On CPU the
default fp32 matmul (MKL `sgemm` on an `nn.Linear` weight) repacks the weight on every call,
and its small-M path is slow on AMD CPUs: measured on a 2-core AMD EPYC with one thread, the
124m shape's linears take ~50 ms at 1 row and ~115 ms at 8 rows. oneDNN with the weight
reordered once into its blocked layout takes ~30 ms at 1 row and ~45 ms at 8 rows, so
8 sequences decode together for ~1.5x the cost of one instead of ~2.3x. It is also
batch-invariant: a row's result does not depend on how many rows share the matmul.

`decode_view(model)` returns the model with each `nn.Linear` swapped for a `PackedLinear`
that holds the packed copy; every other module, parameter and buffer is shared with `model`,
and the forward is `GPT.forward` itself. The packed copies are extra memory (one more fp32
copy of the linear weights, the tied head included). `DecodeView` rebuilds the view when a
weight changes in place (a new checkpoint loaded into the same model) or is replaced.
Anything else (a GPU, a non-fp32 model, no oneDNN) decodes with the model as it is.
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


@functools.cache
def packing_available() -> bool:
    """oneDNN's prepacked linear exists in this torch build and agrees with F.linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 3),
                                               None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.allclose(y, F.linear(x, w), atol=1e-5, rtol=1e-5))


class PackedLinear(nn.Module):
    """`nn.Linear` (no grad) through a weight reordered once for oneDNN."""

    def __init__(self, linear: nn.Linear, rows_hint: int) -> None:
        super().__init__()
        w = linear.weight.detach()
        # Plain attributes, not parameters: the view owns no weights of its own to train.
        self.__dict__["source"] = linear
        self.__dict__["packed"] = torch.ops.mkldnn._reorder_linear_weight(w, rows_hint)
        self.__dict__["bias"] = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return self.source(x)  # the packed path is fp32 inference only
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _eligible(model: nn.Module) -> bool:
    p = next(model.parameters())
    return p.device.type == "cpu" and p.dtype == torch.float32 and packing_available()


def decode_view(model: nn.Module, rows_hint: int = 8) -> nn.Module:
    """`model` with its linears prepacked (CPU, fp32), sharing everything else; else `model`."""
    if not _eligible(model):
        return model

    def clone(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.Linear):
            return PackedLinear(m, rows_hint)
        c = copy.copy(m)  # shallow: parameters, buffers and config are the same objects
        object.__setattr__(c, "_modules", {k: clone(v) for k, v in m._modules.items()})
        return c

    return clone(model)


class DecodeView:
    """The module a decoder runs: `decode_view(model)`, rebuilt when the weights or the
    train/eval mode change (checked on every call: one version counter per linear)."""

    def __init__(self, model: nn.Module, rows_hint: int = 8) -> None:
        self.model, self.rows_hint = model, rows_hint
        self._linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self._key: tuple | None = None
        self._view: nn.Module | None = None

    def _state(self) -> tuple:
        return (self.model.training, *((id(m.weight), m.weight._version) for m in self._linears))

    def __call__(self) -> nn.Module:
        key = self._state()
        if key != self._key:
            self._view, self._key = decode_view(self.model, self.rows_hint), key
        return self._view

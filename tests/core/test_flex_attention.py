"""Packed-block attention through FlexAttention against the dense document mask (the reference).

- The model with a BlockMask gives the dense path's outputs and gradients, on blocks of many
  short documents, one long document, and documents followed by padding. Torch up to 2.13
  has no CPU backward for FlexAttention (it refuses at its device check, and its compiled CPU
  backward fails), so the gradient test runs FlexAttention's uncompiled form with the device
  check lifted: it checks the BlockMask and the model's wiring, which are what this code adds.
- The compiled model takes the BlockMask as an input: micro-batches with other document
  boundaries run the same graph (no recompile).
- The share of tiles FlexAttention skips is reported, and matches a count by hand.
"""
from __future__ import annotations

import pytest
import torch

from tests.core.train_support import micro_model, single_thread  # noqa: F401 (fixture)
from wikigpt_core import doc_attention
from wikigpt_core.doc_attention import blocks_skipped, document_block_mask
from wikigpt_core.model import GPT
from wikigpt_core.train.objectives import LMObjective

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not doc_attention.flex_available(), reason="torch has no FlexAttention")]

T = 64
TILE = 16  # small tiles, so a 64-token block has tiles to skip


def layout(kind: str, rows: int = 2) -> torch.Tensor:
    """Document ids (rows, T); -1 is padding, as the packer writes it."""
    if kind == "many_short":
        return (torch.arange(T) // 5).expand(rows, T).contiguous()
    if kind == "one_long":
        return torch.zeros(rows, T, dtype=torch.long)
    doc = torch.full((rows, T), -1)  # "padded": three documents, then padding
    doc[:, :20], doc[:, 20:31], doc[:, 31:40] = 0, 1, 2
    return doc


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(micro_model(block_size=T))
    idx = torch.randint(0, 300, (2, T))
    targets = idx.roll(-1, 1)
    return model, idx, targets


@pytest.fixture
def differentiable_flex(monkeypatch):
    """FlexAttention's uncompiled (reference) form, allowed to run backward on CPU."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)
    monkeypatch.setattr(doc_attention, "flex_kernel", lambda: fa.flex_attention)
    import wikigpt_core.model as model_module
    monkeypatch.setattr(model_module, "flex_kernel", lambda: fa.flex_attention)


@pytest.mark.parametrize("kind", ["many_short", "one_long", "padded"])
def test_block_mask_gives_the_dense_masks_outputs_and_gradients(kind, differentiable_flex):
    model, idx, targets = model_and_batch()
    doc = layout(kind)
    results = []
    for block_mask in (None, document_block_mask(doc, TILE)):
        model.zero_grad()
        logits, loss = model(idx, targets, doc_ids=doc, block_mask=block_mask)
        loss.backward()
        results.append((logits, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense_logits, dense_grads), (flex_logits, flex_grads) = results
    torch.testing.assert_close(flex_logits, dense_logits, atol=1e-5, rtol=1e-5)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_model_runs_new_boundaries_without_recompiling():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model, idx, targets = model_and_batch()
    model.eval()
    compiled = torch.compile(model, dynamic=False)
    objective = LMObjective(flex=True)
    layouts = [layout("many_short"), layout("padded"), layout("one_long")]
    with torch.no_grad():
        first = dict(idx=idx, targets=targets, doc_ids=layouts[0])
        objective(compiled, first)
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for doc in layouts[1:]:
                batch = dict(idx=idx, targets=targets, doc_ids=doc)
                flex_loss, _ = objective(compiled, batch)
                dense_loss, _ = LMObjective(flex=False)(model, batch)
                torch.testing.assert_close(flex_loss, dense_loss, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs  # the new boundaries reused the graph


def test_skipped_tiles_are_reported_and_counted_right():
    four_docs = (torch.arange(T) // 16).expand(1, T)  # one document per 16-token tile row
    # 4 x 4 tiles: only the 4 diagonal ones hold same-document, causal pairs.
    assert blocks_skipped(document_block_mask(four_docs, TILE)) == pytest.approx(12 / 16)
    one_doc = torch.zeros(1, T, dtype=torch.long)
    # Causal only: the 6 tiles above the diagonal are skipped.
    assert blocks_skipped(document_block_mask(one_doc, TILE)) == pytest.approx(6 / 16)
    shares = {kind: blocks_skipped(document_block_mask(layout(kind), TILE))
              for kind in ("many_short", "one_long", "padded")}
    print("FlexAttention tiles skipped:", shares)
    assert shares["many_short"] > shares["one_long"]

"""The chunked LM head and loss (`fused_head`) against the plain whole-logits path: the same loss,
log-probabilities and gradients within float32 rounding, and at 124m a peak lower by at least
the logits the plain path holds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.core.train_support import micro_model, single_thread  # noqa: F401 (fixture)
from wikigpt_core.config import load_settings
from wikigpt_core.fused_head import chunk_rows, chunked_cross_entropy, chunked_token_logps
from wikigpt_core.model import GPT
from wikigpt_core.train import memory

pytestmark = pytest.mark.usefixtures("single_thread")

N, C, V = 70, 8, 300
ROWS = 8  # 9 chunks, a short last one


def inputs(seed: int = 0, ignored: int = 20):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = torch.randn(V, C, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.randperm(N, generator=g)[:ignored]] = -100
    return hidden, weight, targets


def grads(value: torch.Tensor, *tensors):
    return torch.autograd.grad(value, tensors)


def test_chunks_are_sized_like_the_hidden_states():
    assert chunk_rows(16 * 1024, 768, 32_768, floor=1) == 512  # 43 chunks -> 382 rows -> 512
    assert chunk_rows(16 * 1024, 768, 32_768) == 1024  # the floor: 16 chunks of 128 MiB logits
    assert chunk_rows(N, C, V) == N and chunk_rows(10, 64, 32, floor=1) == 10  # small: one chunk


def test_loss_and_gradients_equal_the_plain_cross_entropy():
    hidden, weight, targets = inputs()
    plain = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    fused = chunked_cross_entropy(hidden, weight, targets, ROWS)
    torch.testing.assert_close(fused, plain)
    for got, want in zip(grads(3 * fused, hidden, weight), grads(3 * plain, hidden, weight)):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # evaluation: the loss alone, no gradients made
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, ROWS), plain.detach())


def test_every_target_ignored_gives_zero():
    hidden, weight, targets = inputs(ignored=N)
    loss = chunked_cross_entropy(hidden, weight, targets, ROWS)
    assert loss.item() == 0.0
    assert all(g.abs().max() == 0 for g in grads(loss, hidden, weight))


def test_token_logps_and_gradients_equal_log_softmax():
    hidden, weight, targets = inputs(1)
    logp = torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    plain = logp * (targets != -100)
    fused = chunked_token_logps(hidden, weight, targets, ROWS)
    torch.testing.assert_close(fused, plain)
    upstream = torch.randn(N)  # DPO weighs each sequence's tokens differently
    for got, want in zip(grads((fused * upstream).sum(), hidden, weight),
                         grads((plain * upstream).sum(), hidden, weight)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("autocast", [False, True])
def test_model_heads_agree(autocast):
    torch.manual_seed(0)
    model = GPT(micro_model())
    idx = torch.randint(0, 300, (3, 40))
    targets = idx.roll(-1, 1)
    targets[:, :7] = -100
    results = {}
    for head in ("logits", "loss"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx, targets, head=head)
        loss.backward()
        results[head] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    tol = dict(atol=2e-3, rtol=2e-2) if autocast else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["loss"][0], results["logits"][0], **tol)
    for got, want in zip(results["loss"][1], results["logits"][1]):
        torch.testing.assert_close(got, want, **tol)


def test_124m_pretraining_peak_drops_by_at_least_the_logits():
    settings = load_settings("124m", env=False)
    cfg = settings.pretrain
    assert (cfg.batch_size, settings.model.block_size, settings.model.vocab_size) == (16, 1024, 32_768)
    logits_bytes = 16 * 1024 * 32_768 * 4  # 2 GiB of float32 logits
    plain = memory.measure_step("pretrain", settings.model, cfg, 16, fused_head=False).peak
    fused = memory.measure_step("pretrain", settings.model, cfg, 16, fused_head=True).peak
    print(f"124m pretraining 16 x 1,024 peak tensors: plain head {plain / memory.GIB:.2f} GiB, "
          f"chunked {fused / memory.GIB:.2f} GiB")
    assert plain - fused >= logits_bytes


def test_compiled_fused_loss_and_gradients_equal_eager(monkeypatch):
    """The autograd Function traces into the compiled graph, over several chunks as at 124m."""
    import wikigpt_core.fused_head as fused_head

    monkeypatch.setattr(fused_head, "MIN_CHUNK_ROWS", 16)  # 64 rows: 4 chunks
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(micro_model())
    idx = torch.randint(0, 300, (2, 32))
    targets = idx.roll(-1, 1)
    targets[:, :5] = -100
    assert chunk_rows(64, 32, 300) == 16
    results = []
    for run in (model, torch.compile(model, dynamic=False)):
        model.zero_grad()
        _, loss = run(idx, targets, head="loss")
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

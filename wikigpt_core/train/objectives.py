"""Objectives: what one micro-batch costs. The Trainer is the same for all three stages.

An objective is called as `objective(model, batch) -> (loss, metrics)`; `loss` is the scalar
to back-propagate (mean over the micro-batch), `metrics` are detached scalars averaged by the
Trainer over an optimizer step (keys namespaced, e.g. `dpo/margin`).

Both ask the model for what they use only: the LM loss from the chunked fused head
(`head="loss"`, on CUDA), DPO's per-token log-probabilities (`head="token_logps"`), so no
(B*T, V) float32 logits exist in a GPU training step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wikigpt_core.chat import IGNORE_INDEX
from wikigpt_core.doc_attention import document_block_mask, use_flex

DPO_BUCKET = 128
"""DPO micro-batches are cut to a multiple of this many columns (the longest response end in
the micro-batch, rounded up): few distinct shapes, so a compiled policy keeps a fixed set of
graphs (block_size / DPO_BUCKET at most: 8 at 1,024), and little padding is computed."""


class LMObjective:
    """Next-token cross-entropy; used for pretraining and (with doc_ids) packed SFT.

    Packed blocks on CUDA attend through FlexAttention: the BlockMask is built here, once per
    micro-batch and outside the compiled model, so the compiled graph takes it as an input and
    new document boundaries never recompile. `flex=False` forces the dense mask (the reference
    path); elsewhere `doc_attention.use_flex` decides.

    The head and loss are computed in chunks (`fused_head`) on CUDA, where the whole logits
    would cost GiBs; on CPU the plain head is kept by default (`chunked=None`), so CPU runs
    (the embedded demo) train to the same bytes as before. Both give the same loss within
    float32 rounding."""

    name = "lm"

    def __init__(self, flex: bool | None = None, chunked: bool | None = None):
        self.flex, self.chunked = flex, chunked

    def _head(self, batch) -> str:
        chunked = batch["idx"].is_cuda if self.chunked is None else self.chunked
        return "loss" if chunked else "logits"

    def _extras(self, model, batch) -> dict:
        if "doc_ids" not in batch:
            return {}
        doc_ids = batch["doc_ids"]
        flex = use_flex(doc_ids.device) if self.flex is None else self.flex
        dropout = getattr(getattr(model, "config", None), "dropout", 0.0)  # FlexAttention has none
        if flex and not (dropout and torch.is_grad_enabled()):
            return {"doc_ids": doc_ids, "block_mask": document_block_mask(doc_ids)}
        return {"doc_ids": doc_ids}

    def __call__(self, model, batch):
        _, loss = model(batch["idx"], batch["targets"], head=self._head(batch), **self._extras(model, batch))
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        """Token-weighted mean loss over the batches (exact, not a mean of means)."""
        total, count = 0.0, 0
        for b in batches:
            n = int((b["targets"] != IGNORE_INDEX).sum())
            if n == 0:
                continue
            loss, _ = self(model, b)
            total += float(loss) * n
            count += n
        return {"loss/val": total / max(count, 1)}


def sequence_logps(model, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over positions whose target is not -100, per row (float32). The
    per-token values come out of the model's (compiled) forward; only (B, T) floats leave it."""
    token_logps, _ = model(idx, targets, head="token_logps")
    return token_logps.sum(-1)


REFERENCE_KEYS = ("ref_chosen", "ref_rejected")
"""Batch keys of the stored reference log-probabilities (see `reference_logps`)."""


def bucket_end(used_end: int, width: int, bucket: int = DPO_BUCKET) -> int:
    """Columns kept for a micro-batch whose last response token is at column used_end - 1:
    rounded up to a multiple of `bucket`, at most the padded `width`."""
    return min(width, -(-max(used_end, 1) // bucket) * bucket)


@torch.no_grad()
def reference_logps(reference, pairs: dict[str, torch.Tensor], batch_size: int, device,
                    autocast=None) -> dict[str, torch.Tensor]:
    """The frozen reference's sequence log-probabilities of every pair, in one pass before
    training: {"ref_chosen": (N,), "ref_rejected": (N,)} float32 on CPU. They never change,
    so the DPO step then runs the policy alone. `autocast` is the training runtime's
    autocast context factory, so the values are those a live reference would give in the step."""
    reference.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in REFERENCE_KEYS}
    n = pairs["chosen_idx"].shape[0]
    for start in range(0, n, batch_size):
        rows = {k: v[start:start + batch_size].to(device) for k, v in pairs.items() if v.dim() == 2}
        rows = _trim_to_bucket(rows, DPO_BUCKET)
        with autocast() if autocast else torch.autocast(torch.device(device).type, enabled=False):
            for side, key in (("chosen", "ref_chosen"), ("rejected", "ref_rejected")):
                out[key].append(sequence_logps(reference, rows[f"{side}_idx"], rows[f"{side}_targets"]).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _trim_to_bucket(batch: dict[str, torch.Tensor], bucket: int) -> dict[str, torch.Tensor]:
    """Drop padding columns past the micro-batch's bucket (they are at target -100, so no
    log-probability changes)."""
    used = (batch["chosen_targets"] != IGNORE_INDEX) | (batch["rejected_targets"] != IGNORE_INDEX)
    cols = used.any(0).nonzero()
    end = bucket_end(int(cols.max()) + 1 if len(cols) else 1, used.shape[1], bucket)
    return {k: v[:, :end] if v.dim() == 2 else v for k, v in batch.items()}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Rafailov et al. 2023, eq. 7: -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]).
    Returns (per-pair loss, chosen reward, rejected reward); rewards are beta * log-ratios."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)
    return loss, chosen_reward.detach(), rejected_reward.detach()


class DPOObjective:
    """Direct Preference Optimization against a frozen reference model.

    When the batch carries the reference's stored log-probabilities (`REFERENCE_KEYS`, from
    `reference_logps`), the step runs the policy alone; otherwise the reference runs live.
    Micro-batches are cut to their length bucket (`DPO_BUCKET`)."""

    name = "dpo"

    static_shapes = False
    """When True every micro-batch keeps the full padded length (the memory estimate's worst
    case) instead of being cut to its bucket."""

    def __init__(self, reference: torch.nn.Module | None, beta: float = 0.1, bucket: int = DPO_BUCKET):
        self.reference = reference.eval() if reference is not None else None
        for p in self.reference.parameters() if reference is not None else ():
            p.requires_grad_(False)
        self.beta, self.bucket = beta, bucket

    def _trim(self, batch):
        return batch if self.static_shapes else _trim_to_bucket(batch, self.bucket)

    def _reference(self, b, idx, tgt) -> torch.Tensor:
        if all(k in b for k in REFERENCE_KEYS):
            return torch.cat([b["ref_chosen"], b["ref_rejected"]]).float()
        if self.reference is None:
            raise ValueError("DPO batch has no stored reference log-probabilities (ref_chosen, "
                             "ref_rejected) and the objective no reference model; pass one")
        with torch.no_grad():
            return sequence_logps(self.reference, idx, tgt)

    def __call__(self, model, batch):
        b = self._trim(batch)
        n = b["chosen_idx"].shape[0]
        # One forward over chosen and rejected together (2B rows).
        idx = torch.cat([b["chosen_idx"], b["rejected_idx"]])
        tgt = torch.cat([b["chosen_targets"], b["rejected_targets"]])
        policy = sequence_logps(model, idx, tgt)
        ref = self._reference(b, idx, tgt)
        loss, cr, rr = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
        metrics = {
            "dpo/reward_accuracy": (cr > rr).float().mean(),
            "dpo/chosen_reward": cr.mean(),
            "dpo/rejected_reward": rr.mean(),
            "dpo/margin": (cr - rr).mean(),
        }
        return loss.mean(), metrics

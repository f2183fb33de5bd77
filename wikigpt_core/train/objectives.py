"""Objectives: what one micro-batch costs. The Trainer is the same for all three stages.

An objective is called as `objective(model, batch) -> (loss, metrics)`; `loss` is the scalar
to back-propagate (mean over the micro-batch), `metrics` are detached scalars averaged by the
Trainer over an optimizer step (keys namespaced, e.g. `dpo/margin`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wikigpt_core.chat import IGNORE_INDEX


class LMObjective:
    """Next-token cross-entropy; used for pretraining and (with doc_ids) packed SFT."""

    name = "lm"

    def __call__(self, model, batch):
        extras = {"doc_ids": batch["doc_ids"]} if "doc_ids" in batch else {}
        _, loss = model(batch["idx"], batch["targets"], **extras)
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
    """Sum of log p(target) over positions whose target is not -100, per row (float32)."""
    logits, _ = model(idx, targets)
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != IGNORE_INDEX
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Rafailov et al. 2023, eq. 7: -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]).
    Returns (per-pair loss, chosen reward, rejected reward); rewards are beta * log-ratios."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)
    return loss, chosen_reward.detach(), rejected_reward.detach()


class DPOObjective:
    """Direct Preference Optimization against a frozen reference model."""

    name = "dpo"

    static_shapes = False
    """When True every micro-batch keeps the full padded length instead of being trimmed, so a
    compiled forward sees one shape; the Trainer sets it when it compiles."""

    def __init__(self, reference: torch.nn.Module, beta: float = 0.1):
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.beta = beta

    def _trim(self, batch):
        """Drop columns past the last response token of this micro-batch (pairs are padded
        to the longest pair of the whole set), unless shapes must stay static. The dropped
        columns are padding at target -100, so the loss is the same either way."""
        if self.static_shapes:
            return batch
        used = (batch["chosen_targets"] != IGNORE_INDEX) | (batch["rejected_targets"] != IGNORE_INDEX)
        cols = used.any(0).nonzero()
        end = int(cols.max()) + 1 if len(cols) else 1
        return {k: v[:, :end] if v.dim() == 2 else v for k, v in batch.items()}

    def __call__(self, model, batch):
        b = self._trim(batch)
        n = b["chosen_idx"].shape[0]
        # One forward over chosen and rejected together (2B rows).
        idx = torch.cat([b["chosen_idx"], b["rejected_idx"]])
        tgt = torch.cat([b["chosen_targets"], b["rejected_targets"]])
        policy = sequence_logps(model, idx, tgt)
        with torch.no_grad():
            ref = sequence_logps(self.reference, idx, tgt)
        loss, cr, rr = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
        metrics = {
            "dpo/reward_accuracy": (cr > rr).float().mean(),
            "dpo/chosen_reward": cr.mean(),
            "dpo/rejected_reward": rr.mean(),
            "dpo/margin": (cr - rr).mean(),
        }
        return loss.mean(), metrics

"""Segmentation losses: focal loss and a factory for cross-entropy / focal."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalLoss", "build_loss", "focal_loss"]


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017).

    ``mean`` divides by the sum of ``alpha_t`` over the kept pixels, as weighted
    cross-entropy does, so ``gamma=0`` gives exactly ``F.cross_entropy(weight=alpha)``.

    Args:
        logits: (B, K, ...) unnormalised scores.
        target: (B, ...) class ids.
        gamma: focusing parameter (0 is cross-entropy).
        alpha: optional (K,) per-class weights.
        ignore_index: class id whose pixels contribute nothing (e.g. No Data).
        reduction: ``mean``, ``sum`` or ``none`` (per-pixel, zeros where ignored).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    logp = F.log_softmax(logits.float(), dim=1)  # (B, K, ...)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))  # (B, ...)
    logp_t = logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (B, ...)
    weight = valid.float()
    if alpha is not None:
        weight = weight * alpha.to(logp.device, logp.dtype)[safe_target]  # (B, ...)
    modulator = (1.0 - logp_t.exp()).clamp_min(0.0).pow(gamma) if gamma != 0 else 1.0
    loss = -weight * modulator * logp_t  # (B, ...)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # An all-ignored batch gives 0 (with a gradient path), not NaN.
    return loss.sum() / weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`.

    Args:
        gamma: focusing parameter (0 is cross-entropy).
        alpha: optional per-class weights (length = number of classes).
        ignore_index: class id to ignore, or None.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma, self.ignore_index = gamma, ignore_index
        self.register_buffer(
            "alpha", None if alpha is None else torch.tensor(list(alpha), dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index)


class CrossEntropy(nn.Module):
    """Cross-entropy in fp32 with optional class weights and ignore index.

    Args:
        weight: optional per-class weights.
        ignore_index: class id to ignore, or None.
    """

    def __init__(self, weight: Sequence[float] | None = None, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer(
            "weight", None if weight is None else torch.tensor(list(weight), dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=ignore)


def build_loss(
    name: str = "focal",
    gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = None,
) -> nn.Module:
    """``ce`` (cross-entropy) or ``focal``; ``ignore_index=6`` drops Chesapeake No Data pixels."""
    match name:
        case "ce" | "cross_entropy":
            return CrossEntropy(class_weights, ignore_index)
        case "focal":
            return FocalLoss(gamma, class_weights, ignore_index)
        case _:
            raise ValueError(f"unknown loss {name!r}; choose 'ce' or 'focal'")

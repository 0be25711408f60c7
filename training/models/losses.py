"""Segmentation losses: focal loss, cross-entropy, the Lovasz-softmax IoU surrogate, and a factory.

Cross-entropy weighs every pixel alike, so a class of thin structures (a 5 px road) costs little
when its edges are wrong; the Lovasz-softmax term (Berman et al. 2018) is a convex surrogate of
each class's IoU, the metric that gates promotion, and weighs every present class alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSSES",
    "CombinedLoss",
    "CrossEntropy",
    "FocalLoss",
    "build_loss",
    "focal_loss",
    "lovasz_softmax",
]


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


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted along the last
    axis (Berman et al. 2018), for each row of ``gt_sorted`` (K, P) at once."""
    gts = gt_sorted.sum(-1, keepdim=True)  # (K, 1)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (1.0 - gt_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union  # (K, P)
    return torch.cat((jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]), dim=-1)


def lovasz_softmax(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Lovasz-softmax loss over the batch: the mean, over the classes present in ``target``,
    of the Lovasz extension of ``1 - IoU`` on the softmax probabilities.

    Args:
        logits: (B, K, H, W) unnormalised scores.
        target: (B, H, W) class ids.
        ignore_index: class id whose pixels are left out (No Data), or None.
    """
    k = logits.shape[1]
    probs = F.softmax(logits.float(), dim=1).transpose(0, 1).reshape(k, -1)  # (K, P)
    labels = target.reshape(-1)  # (P,)
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[:, keep], labels[keep]
    fg = F.one_hot(labels, k).T.to(probs.dtype)  # (K, P)
    # A class absent from the batch has no IoU to improve; the ignored class is never scored.
    present = fg.sum(-1) > 0
    if ignore_index is not None and 0 <= ignore_index < k:
        present[ignore_index] = False
    if not bool(present.any()):
        return probs.sum() * 0.0  # nothing labelled: 0 with a gradient path
    fg, probs = fg[present], probs[present]
    errors_sorted, order = torch.sort((fg - probs).abs(), dim=-1, descending=True)  # (C, P)
    grad = _lovasz_grad(fg.gather(-1, order))
    return (errors_sorted * grad).sum(-1).mean()


class LovaszSoftmax(nn.Module):
    """Module form of :func:`lovasz_softmax`."""

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax(logits, target, self.ignore_index)


class CombinedLoss(nn.Module):
    """``main(logits, target) + weight * extra(logits, target)``."""

    def __init__(self, main: nn.Module, extra: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        self.main, self.extra, self.weight = main, extra, float(weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.main(logits, target) + self.weight * self.extra(logits, target)


#: Names :func:`build_loss` accepts (the ``training.loss`` config key).
LOSSES = ("ce", "cross_entropy", "focal", "ce+lovasz", "focal+lovasz")


def build_loss(
    name: str = "focal",
    gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = None,
    lovasz_weight: float = 1.0,
) -> nn.Module:
    """``ce`` (cross-entropy), ``focal``, or either ``+lovasz`` (plus ``lovasz_weight`` times the
    Lovasz-softmax IoU surrogate); ``ignore_index=6`` drops Chesapeake No Data pixels."""
    match name:
        case "ce" | "cross_entropy":
            return CrossEntropy(class_weights, ignore_index)
        case "focal":
            return FocalLoss(gamma, class_weights, ignore_index)
        case "ce+lovasz" | "focal+lovasz":
            main = build_loss(name.split("+")[0], gamma, class_weights, ignore_index)
            return CombinedLoss(main, LovaszSoftmax(ignore_index), lovasz_weight)
        case _:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")

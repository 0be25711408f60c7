"""Focal loss and the loss factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.models.losses import CrossEntropy, FocalLoss, build_loss, focal_loss


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 7, 8, 8, generator=g), torch.randint(0, 7, (2, 8, 8), generator=g)


def test_gamma_zero_is_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.1])
    torch.testing.assert_close(focal_loss(logits, target, gamma=0), F.cross_entropy(logits, target))
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0, alpha=weights, ignore_index=6),
        F.cross_entropy(logits, target, weight=weights, ignore_index=6),
    )


def test_focal_down_weights_easy_pixels(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    assert focal_loss(logits, target, gamma=2.0) < F.cross_entropy(logits, target)
    per_pixel = focal_loss(logits, target, gamma=2.0, reduction="none")
    assert per_pixel.shape == target.shape and (per_pixel >= 0).all()


def test_ignore_index_is_respected(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    target = target.clone()
    target[:, :4] = 6
    loss_fn = build_loss("focal", gamma=2.0, ignore_index=6)
    base = loss_fn(logits, target)
    changed = logits.clone()
    changed[:, :, :4] = torch.randn_like(changed[:, :, :4]) * 10
    torch.testing.assert_close(loss_fn(changed, target), base)
    leaf = logits.clone().requires_grad_(True)
    loss_fn(leaf, target).backward()
    assert leaf.grad[:, :, :4].abs().max() == 0 and leaf.grad[:, :, 4:].abs().max() > 0
    all_ignored = torch.full_like(target, 6)
    assert loss_fn(logits, all_ignored).item() == 0.0
    ce = build_loss("ce", ignore_index=6)
    torch.testing.assert_close(ce(changed, target), ce(logits, target))


def test_factory_and_validation() -> None:
    assert isinstance(build_loss("focal"), FocalLoss)
    assert isinstance(build_loss("ce"), CrossEntropy)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dice")
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)


def test_bf16_logits_give_fp32_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    loss = build_loss("focal")(logits.bfloat16(), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)

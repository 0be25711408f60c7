"""Focal loss and the loss factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.models.losses import CrossEntropy, FocalLoss, build_loss, focal_loss, lovasz_softmax


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


def test_lovasz_is_zero_when_right_and_ignores_no_data(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, target = batch
    right = 50.0 * F.one_hot(target, 7).permute(0, 3, 1, 2).float()  # confident and correct
    assert float(lovasz_softmax(right, target, ignore_index=6)) < 1e-6
    wrong = right.roll(1, dims=1)  # confident and wrong everywhere
    assert float(lovasz_softmax(wrong, target, ignore_index=6)) == pytest.approx(1.0, abs=1e-4)
    # Pixels of the ignored class change nothing, whatever is predicted there.
    noisy = right.clone()
    noisy[:, :, target[0] == 6] = torch.randn_like(noisy[:, :, target[0] == 6])
    mixed = torch.where((target == 6).unsqueeze(1), noisy, right)
    assert float(lovasz_softmax(mixed, target, ignore_index=6)) < 1e-6


def test_lovasz_penalises_a_missed_thin_class_more_than_ce() -> None:
    """A 1-px line of class 1 across a field of class 0, predicted as field: CE barely moves
    (few pixels wrong), the IoU surrogate loses the whole class."""
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 16] = 1
    logits = torch.zeros(1, 2, 32, 32)
    logits[:, 0] = 4.0  # field everywhere
    assert float(F.cross_entropy(logits, target)) < 0.2
    assert float(lovasz_softmax(logits, target)) > 0.45


def test_combined_loss_adds_the_weighted_lovasz_term(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    loss = build_loss("ce+lovasz", ignore_index=6, lovasz_weight=0.5)
    expected = F.cross_entropy(logits, target, ignore_index=6) + 0.5 * lovasz_softmax(logits, target, 6)
    value = loss(logits, target)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert isinstance(build_loss("focal+lovasz").main, FocalLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dice")

"""SegmentationTask: fits from pixels and from cached features, metrics, schedule, equivalence."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from training.module import (
    SegmentationTask,
    build_metrics,
    confusion_counts,
    metrics_from_confusion,
    metrics_to_dict,
    warmup_cosine,
)

CHIP = 32
# The frozen encoder is kept in eval mode on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")


class RandomChips(Dataset):
    """Deterministic random chips whose label depends on the pixels (so the loss can drop)."""

    def __init__(self, n: int = 8, features: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 4, CHIP, CHIP, generator=g)
        self.masks = (self.images[:, 3] > 0).long() + 2 * (self.images[:, 0] > 1).long()
        self.features = features

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.features:
            return {
                "features": self.images[i, :1].repeat(192, 1, 1)[:, ::8, ::8].contiguous(),
                "mask": self.masks[i],
            }
        return {"image": self.images[i], "mask": self.masks[i]}


def _task(**kwargs) -> SegmentationTask:
    torch.manual_seed(0)
    defaults = {
        "preset": "tiny",
        "head_width": 16,
        "lr": 1e-3,
        "warmup_steps": 2,
        "loss": "focal",
        "ignore_index": 6,
    }
    return SegmentationTask(**{**defaults, **kwargs})


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize("features", [False, True])
def test_fit_runs_and_reports_metrics(features: bool) -> None:
    task = _task(features_only=features)
    loader = DataLoader(RandomChips(8, features), batch_size=4)
    trainer = _trainer(max_epochs=2, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(task, loader, loader)
    assert trainer.global_step == 4
    losses = trainer.callback_metrics
    assert math.isfinite(float(losses["train/loss_epoch"]))
    val = task.epoch_metrics["val"]
    assert set(val) == {"miou", "weighted_iou", "f1", "per_class_iou", "confusion_matrix"}
    assert len(val["confusion_matrix"]) == 7 and sum(map(sum, val["confusion_matrix"])) == 8 * CHIP * CHIP
    assert val["per_class_iou"]["No Data"] is None  # the ignored class
    assert "val/miou" in trainer.callback_metrics and "val/iou/Water" in trainer.callback_metrics
    assert task.model.encoder is None if features else not task.model.encoder.training


def test_loss_decreases_on_features() -> None:
    task = _task(features_only=True, lr=3e-3)
    loader = DataLoader(RandomChips(8, features=True), batch_size=8)
    first = task.criterion(task.logits(next(iter(loader))), next(iter(loader))["mask"]).item()
    _trainer(max_steps=8).fit(task, loader)
    task.eval()
    with torch.no_grad():
        batch = next(iter(loader))
        last = task.criterion(task.logits(batch), batch["mask"]).item()
    assert last < first


def test_bf16_mixed_precision_fit() -> None:
    task = _task()
    loader = DataLoader(RandomChips(4), batch_size=2)
    trainer = _trainer(max_steps=2, precision="bf16-mixed", limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(task, loader, loader)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))


def test_cached_features_equal_end_to_end() -> None:
    task = _task()
    task.train()  # BN in train mode, frozen encoder stays in eval mode
    assert not task.model.encoder.training and task.model.head.training
    data = RandomChips(4)
    images, masks = data.images, data.masks
    with torch.no_grad():
        cache = task.model.forward_features(images).float()  # the fp32 cache
    state = {k: v.clone() for k, v in task.model.head.state_dict().items()}
    end_to_end = task.criterion(task.logits({"image": images, "mask": masks}), masks)
    task.model.head.load_state_dict(state)  # undo the BN running-stat update
    cached = task.criterion(task.logits({"features": cache, "mask": masks}), masks)
    assert abs(end_to_end.item() - cached.item()) <= 1e-5


def test_unfrozen_encoder_trains() -> None:
    task = _task(freeze_encoder=False, total_steps=10)
    task.train()
    assert task.model.encoder.training and all(p.requires_grad for p in task.model.encoder.parameters())
    data = RandomChips(2)
    task.criterion(task.logits({"image": data.images}), data.masks).backward()
    assert task.model.encoder.cls_token.grad is not None
    assert task.model.encoder.patch_embedding.weight_generator.fc_weight.weight.grad.abs().sum() > 0
    optimizer = task.configure_optimizers()["optimizer"]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in task.parameters()
    )


def test_bad_batches_raise() -> None:
    task = _task(features_only=True)
    with pytest.raises(ValueError, match="features_only"):
        task.logits({"image": torch.zeros(1, 4, CHIP, CHIP)})
    with pytest.raises(ValueError, match="'image' or a 'features'"):
        task.logits({"mask": torch.zeros(1, CHIP, CHIP)})


def test_schedule_warmup_then_cosine() -> None:
    values = [warmup_cosine(s, 4, 20) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert (
        values[4] == pytest.approx(1.0)
        and values[12] == pytest.approx(0.5)
        and values[20] == pytest.approx(0.0)
    )
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))


def test_metrics_to_dict() -> None:
    confmat = torch.tensor([[5, 1, 0], [0, 2, 0], [0, 0, 0]])
    out = metrics_to_dict(
        {
            "miou": torch.tensor(0.6),
            "weighted_iou": torch.tensor(0.7),
            "f1": torch.tensor(0.8),
            "per_class_iou": torch.tensor([5 / 6, 2 / 3, 0.0]),
            "confusion_matrix": confmat,
        },
        ["a", "b", "c"],
    )
    assert out["per_class_iou"] == {"a": pytest.approx(5 / 6), "b": pytest.approx(2 / 3), "c": None}
    assert out["confusion_matrix"] == confmat.tolist() and out["miou"] == pytest.approx(0.6)


def test_metrics_from_confusion_by_hand() -> None:
    """IoU, mIoU, support-weighted IoU and macro F1 of a confusion matrix worked out by hand, and
    the same numbers from the training loop's torchmetrics collection on the pixels behind it."""
    # Rows target, columns prediction. Class 2 is ignored (no target pixels, predicted once);
    # class 3 never occurs.
    cm = [[8, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    names = ["a", "b", "ignored", "absent"]
    got = metrics_from_confusion(np.array(cm), names, ignore_index=2)
    # tp = (8, 3, 0, 0), target pixels (9, 6, 0, 0), predicted pixels (10, 4, 1, 0)
    iou_a, iou_b = 8 / (10 + 9 - 8), 3 / (4 + 6 - 3)
    assert got["per_class_iou"] == {
        "a": pytest.approx(iou_a),
        "b": pytest.approx(iou_b),
        "ignored": None,
        "absent": None,
    }
    assert got["miou"] == pytest.approx((iou_a + iou_b) / 2)
    assert got["weighted_iou"] == pytest.approx((9 * iou_a + 6 * iou_b) / 15)
    # F1 = 2 tp / (2 tp + fn + fp): a 16 / 19, b 6 / 10, the predicted ignored class 0 (counted,
    # as torchmetrics counts every class with tp + fp + fn > 0); the absent class is left out.
    assert got["f1"] == pytest.approx((16 / 19 + 6 / 10 + 0) / 3)
    assert got["confusion_matrix"] == cm

    # The pixels behind the matrix, plus ignored-target pixels that must not count.
    pairs = [(t, p) for t, row in enumerate(cm) for p, n in enumerate(row) for _ in range(n)]
    target = np.array([t for t, _ in pairs] + [2, 2])
    pred = np.array([p for _, p in pairs] + [0, 1])
    assert confusion_counts(pred, target, 4, ignore_index=2).tolist() == cm
    loop = build_metrics(4, ignore_index=2)
    loop.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected = metrics_to_dict(loop.compute(), names, ignore_index=2)
    assert expected == got  # bit-identical to torchmetrics' own reductions


def test_fusion_head_trains_from_cached_features_and_pixels() -> None:
    """The default head learns from features + pixels, and equals its end-to-end loss."""
    task = _task(head="fusion", lr=3e-3)
    assert task.model.head.kind == "fusion" and task.hparams.head == "fusion"
    data = RandomChips(8)
    images, masks = data.images, data.masks
    with torch.no_grad():
        cache = task.model.forward_features(images).float()
    task.eval()
    with torch.no_grad():
        end_to_end = task.criterion(task.logits({"image": images, "mask": masks}), masks).item()
        cached = task.criterion(
            task.logits({"features": cache, "pixels": images, "mask": masks}), masks
        ).item()
    assert abs(end_to_end - cached) <= 1e-5
    with pytest.raises(ValueError, match="needs the normalised pixels"):
        task.logits({"features": cache, "mask": masks})

    batches = [{"features": cache, "pixels": images, "mask": masks}]
    first = cached
    _trainer(max_steps=10).fit(task, DataLoader(batches, batch_size=None))
    task.eval()
    with torch.no_grad():
        last = task.criterion(task.logits(batches[0]), masks).item()
    assert last < first

"""Linear probe: what the frozen encoder's features alone separate, without the head's pixel branch.

The served model's head reads the encoder grid *and* the chip's pixels (the fusion head's
full-resolution branch), so its held-out mIoU mixes what the encoder learnt with what the pixels
say. The probe isolates the encoder: one 1x1 convolution (a linear map per patch cell) on the
cached feature grid, its logits upsampled bilinearly to the chip's pixels, trained a fixed number
of epochs on the training split's cached features and scored on the held-out split's. Random-init
and pretrained encoders are then compared on the same, cheap and deterministic footing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.module import confusion_counts, metrics_from_confusion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeOptions:
    """How the probe trains (``training.probe`` in setup/conf/training)."""

    epochs: int = 10
    lr: float = 1e-2
    batch_size: int = 32
    weight_decay: float = 0.0


def _grids(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) from a cache's features; a cache of dihedral views gives view 0 (the upright chip)."""
    return features[:, 0] if features.ndim == 5 else features


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    ignore_index: int | None = None,
    options: ProbeOptions = ProbeOptions(),
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a 1x1 conv on frozen feature grids and score it on held-out chips.

    Args:
        train_features, test_features: cached grids (N, C, h, w) (or (N, V, C, h, w): view 0),
            any float dtype.
        train_labels, test_labels: class ids (N, S, S), S a multiple of h.
        class_names: one name per class (the number of classes).
        ignore_index: a class id left out of the loss and the metrics (No Data).
        options: epochs, learning rate, batch size, weight decay.
        seed: the weight init and the batch order come from it alone (deterministic).

    Returns:
        ``{"miou", "per_class_iou", "weighted_iou", "f1", "confusion_matrix", "epochs",
        "train_chips", "test_chips", "channels", "seconds", "final_loss"}`` on the test chips.
    """
    started = time.perf_counter()
    k = len(class_names)
    x_train = _grids(train_features)
    x_test = _grids(test_features)
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"the probe needs train and test chips, got {len(x_train)} and {len(x_test)}")
    size = int(train_labels.shape[-1])
    # Standardise each channel with the training statistics: the same linear map, better conditioned.
    flat = x_train.float().transpose(0, 1).reshape(x_train.shape[1], -1)
    mean, std = flat.mean(1).view(1, -1, 1, 1), flat.std(1).clamp_min(1e-6).view(1, -1, 1, 1)
    del flat

    generator = torch.Generator().manual_seed(seed)
    probe = nn.Conv2d(x_train.shape[1], k, kernel_size=1)
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1.0 / float(np.sqrt(x_train.shape[1]))
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    ignore = -100 if ignore_index is None else int(ignore_index)

    def logits(grids: torch.Tensor) -> torch.Tensor:
        out = probe((grids.float() - mean) / std)
        return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)

    loss = torch.tensor(float("nan"))
    for epoch in range(options.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), options.batch_size):
            index = order[start : start + options.batch_size]
            target = train_labels[index].long()
            if ignore_index is not None and bool((target == ignore).all()):
                continue  # nothing to learn from a chip of No Data only (CE would be NaN)
            loss = F.cross_entropy(logits(x_train[index]), target, ignore_index=ignore)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        log.info("[probe] epoch %d/%d: loss %.4f", epoch + 1, options.epochs, total / max(1, batches))

    confusion = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(x_test), options.batch_size):
            pred = logits(x_test[start : start + options.batch_size]).argmax(1)
            confusion += confusion_counts(
                pred.numpy(), test_labels[start : start + options.batch_size].numpy(), k, ignore_index
            )
    result = metrics_from_confusion(confusion, list(class_names), ignore_index)
    result.update(
        {
            "epochs": options.epochs,
            "train_chips": len(x_train),
            "test_chips": len(x_test),
            "channels": int(x_train.shape[1]),
            "final_loss": float(loss.detach()),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    log.info(
        "[probe] held-out mIoU %.4f on %d test chips (%d channels, %d epochs, %.1f s)",
        result["miou"],
        len(x_test),
        result["channels"],
        options.epochs,
        result["seconds"],
    )
    return result


__all__ = ["ProbeOptions", "linear_probe"]

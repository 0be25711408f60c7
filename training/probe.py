"""Linear probe: what the frozen encoder's features alone separate, without the head's pixel branch.

The served model's head reads the encoder grid *and* the chip's pixels (the fusion head's
full-resolution branch), so its held-out mIoU mixes what the encoder learnt with what the pixels
say. The probe isolates the encoder: one 1x1 convolution (a linear map per patch cell) on the
cached feature grid, its logits upsampled bilinearly to the chip's pixels, trained a fixed number
of epochs on the training split's cached features (on a strided grid of pixels, for speed) and
scored on every pixel of the held-out split's cached chips. Random-init
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
    #: Training reads the bilinear logit field on a grid of every ``train_stride``-th pixel per axis
    #: (and the labels there): ``train_stride``² times less work per epoch; held-out scoring
    #: reads every pixel.
    train_stride: int = 4


def _grids(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) from a cache's features; a cache of dihedral views gives view 0 (the upright chip)."""
    return features[:, 0] if features.ndim == 5 else features


def _channel_stats(grids: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (fp64 sums, chunk by chunk) of grids (N, C, h, w)."""
    total = torch.zeros(grids.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(grids), chunk):
        part = grids[start : start + chunk].double()
        total += part.sum((0, 2, 3))
        squares += (part * part).sum((0, 2, 3))
    count = grids.shape[0] * grids.shape[2] * grids.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


def _standardised(
    grids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """(N, h, w, C) fp16 cells of grids (N, C, h, w), standardised per channel (no fp32 copy of it all)."""
    out = torch.empty(grids.shape[0], grids.shape[2], grids.shape[3], grids.shape[1], dtype=torch.float16)
    for start in range(0, len(grids), chunk):
        out[start : start + chunk] = (
            (grids[start : start + chunk].permute(0, 2, 3, 1).float() - mean) / std
        ).half()
    return out


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
        options: epochs, learning rate, batch size, weight decay, training pixel stride.
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
    size, channels = int(train_labels.shape[-1]), int(x_train.shape[1])
    # Standardise each channel with the training statistics (the same linear map, better
    # conditioned), once, into cells x channels (a 1x1 conv is then one matmul per batch).
    mean, std = _channel_stats(x_train)
    cells_train, cells_test = _standardised(x_train, mean, std), _standardised(x_test, mean, std)

    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(channels, k)  # the 1x1 conv on (N, h, w, C) cells
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1.0 / float(np.sqrt(channels))
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    ignore = -100 if ignore_index is None else int(ignore_index)

    def logits(cells: torch.Tensor, side: int = size) -> torch.Tensor:
        out = probe(cells.float()).permute(0, 3, 1, 2)  # (B, K, h, w)
        return F.interpolate(out, size=(side, side), mode="bilinear", align_corners=False)

    stride = max(1, int(options.train_stride))
    if size % stride:
        raise ValueError(f"train_stride {stride} must divide the chip size {size}")
    # The field at side size/stride samples the centre of each stride x stride block; the label
    # there is the block's pixel at stride // 2.
    sampled = train_labels[:, stride // 2 :: stride, stride // 2 :: stride]

    loss = torch.tensor(float("nan"))
    for epoch in range(options.epochs):
        order = torch.randperm(len(cells_train), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), options.batch_size):
            index = order[start : start + options.batch_size]
            target = sampled[index].long()
            if ignore_index is not None and bool((target == ignore).all()):
                continue  # nothing to learn from a chip of No Data only (CE would be NaN)
            loss = F.cross_entropy(logits(cells_train[index], size // stride), target, ignore_index=ignore)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        log.info("[probe] epoch %d/%d: loss %.4f", epoch + 1, options.epochs, total / max(1, batches))

    confusion = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(cells_test), options.batch_size):
            pred = logits(cells_test[start : start + options.batch_size]).argmax(1)
            confusion += confusion_counts(
                pred.numpy(), test_labels[start : start + options.batch_size].numpy(), k, ignore_index
            )
    result = metrics_from_confusion(confusion, list(class_names), ignore_index)
    result.update(
        {
            "epochs": options.epochs,
            "train_chips": len(x_train),
            "test_chips": len(x_test),
            "channels": channels,
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

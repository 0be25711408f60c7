"""LightningModule for the Chesapeake segmentation head on Clay features.

Lifecycle as in torchgeo's ``BaseTask``: ``save_hyperparameters`` -> ``configure_models`` ->
``configure_losses`` -> ``configure_metrics``. Train, val and test share one step.

Batches are dicts:

- ``{"image": float32 (B, 4, H, W), "mask": int64 (B, H, W)}``: end to end from normalised
  pixels (``core.naip.normalize``); or
- ``{"features": (B, dim, H/8, W/8), "mask": int64 (B, H, W)}``: from cached encoder
  features (the grid of :meth:`ClaySegmenter.forward_features`; fp16 caches are upcast),
  plus ``"pixels"``: float32 (B, 4, H, W) normalised chips for a head that reads them (fusion).

With a frozen encoder (the default) both give identical logits, so the head can be trained on
a feature cache computed once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassF1Score, MulticlassJaccardIndex

from training.models.checkpoint import load_encoder, load_encoder_state_dict
from training.models.clay import build_encoder
from training.models.head import DEFAULT_HEAD, ClaySegmenter, make_head
from training.models.losses import build_loss

__all__ = [
    "SegmentationTask",
    "confusion_counts",
    "metrics_from_confusion",
    "metrics_to_dict",
    "warmup_cosine",
]

STAGES = ("train", "val", "test")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_metrics(
    num_classes: int, ignore_index: int | None = None, validate_args: bool = True
) -> MetricCollection:
    """mIoU, per-class IoU, support-weighted IoU (Clay's number), macro F1 and the confusion matrix.

    ``validate_args=False`` skips torchmetrics' per-update input checks (a ``torch.unique`` over
    every pixel, costly on full scenes); only for inputs known to be class ids
    in ``[0, num_classes)``, such as argmax predictions and checked label rasters.
    """
    k, ignore, check = num_classes, ignore_index, validate_args
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(k, average="macro", ignore_index=ignore, validate_args=check),
            "per_class_iou": MulticlassJaccardIndex(
                k, average="none", ignore_index=ignore, validate_args=check
            ),
            "weighted_iou": MulticlassJaccardIndex(
                k, average="weighted", ignore_index=ignore, validate_args=check
            ),
            "f1": MulticlassF1Score(k, average="macro", ignore_index=ignore, validate_args=check),
            "confusion_matrix": MulticlassConfusionMatrix(k, ignore_index=ignore, validate_args=check),
        }
    )


def metrics_to_dict(
    computed: Mapping[str, torch.Tensor], class_names: Sequence[str], ignore_index: int | None = None
) -> dict[str, Any]:
    """Plain-Python form of the computed metric collection.

    Returns ``{"miou", "weighted_iou", "f1", "per_class_iou": {name: iou or None},
    "confusion_matrix": [[...]] (rows = target, cols = prediction)}``. A class with neither
    target nor predicted pixels (or the ignored class) gets ``None``, not a misleading 0.
    """
    confmat = computed["confusion_matrix"].long()
    seen = (confmat.sum(0) + confmat.sum(1)) > 0
    per_class = computed["per_class_iou"].float()
    per_class_iou = {
        name: (float(per_class[i]) if bool(seen[i]) and i != ignore_index else None)
        for i, name in enumerate(class_names)
    }
    return {
        "miou": float(computed["miou"]),
        "weighted_iou": float(computed["weighted_iou"]),
        "f1": float(computed["f1"]),
        "per_class_iou": per_class_iou,
        "confusion_matrix": confmat.tolist(),
    }


def confusion_counts(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Confusion matrix (K, K) int64 (rows = target, cols = prediction) of class-id arrays, with
    pixels whose target is ``ignore_index`` left out, as torchmetrics counts them; ids must lie
    in ``[0, num_classes)``. One ``bincount``: milliseconds for a 2048² scene."""
    t = np.asarray(target).reshape(-1).astype(np.int64)
    p = np.asarray(pred).reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``num / denom`` in float32, 0 where ``denom`` is 0 (torchmetrics' ``zero_division=0``)."""
    num, denom = num.float(), denom.float()
    return torch.where(denom != 0, num / denom, torch.zeros((), dtype=num.dtype))


def metrics_from_confusion(
    confmat: np.ndarray | torch.Tensor, class_names: Sequence[str], ignore_index: int | None = None
) -> dict[str, Any]:
    """:func:`metrics_to_dict` of :func:`build_metrics` computed from a confusion matrix of
    :func:`confusion_counts` (the same numbers, without five passes over every pixel).

    The formulas are torchmetrics' (``MulticlassJaccardIndex`` and ``MulticlassF1Score`` on the
    same pixels), in the same float32 operations, from the public definitions:

    - IoU of class c: ``tp / (tp + fp + fn)`` (0 where the union is empty); ``miou`` averages
      it over the classes with target or predicted pixels, less ``ignore_index``; ``weighted_iou``
      weights it by each class's target pixels (support).
    - F1 of class c: ``2 tp / (2 tp + fn + fp)``; ``f1`` averages it over the classes with
      ``tp + fp + fn > 0`` (an ignored class that was predicted counts, as in torchmetrics).
    """
    cm = torch.as_tensor(np.asarray(confmat), dtype=torch.long)
    k = cm.shape[0]
    counts = cm.float()
    tp = torch.diag(counts)
    support, predicted = counts.sum(1), counts.sum(0)  # per class: target pixels, predicted pixels
    iou = _ratio(tp, predicted + support - tp)
    present = torch.ones_like(iou)
    if ignore_index is not None and 0 <= ignore_index < k:
        present[ignore_index] = 0.0
    present[support + predicted == 0] = 0.0
    tp_i = torch.diag(cm)
    fp, fn = cm.sum(0) - tp_i, cm.sum(1) - tp_i
    f1 = _ratio(2.0 * tp_i, 2.0 * tp_i + 1.0 * fn + fp)  # F-beta with beta = 1, as torchmetrics sums it
    f1_weights = torch.ones_like(f1)
    f1_weights[tp_i + fp + fn == 0] = 0.0
    computed = {
        "miou": ((present * iou) / present.sum()).sum(),
        "per_class_iou": iou,
        "weighted_iou": ((support * iou) / support.sum()).sum(),
        "f1": _ratio(f1_weights * f1, f1_weights.sum(-1, keepdim=True)).sum(-1),
        "confusion_matrix": cm,
    }
    return metrics_to_dict(computed, class_names, ignore_index)


class SegmentationTask(pl.LightningModule):
    """Train the Chesapeake head (and optionally the encoder) with focal or CE loss.

    Args:
        preset: Clay preset (``tiny``, ``small``, ``base``, ``large``).
        num_classes: output classes.
        head_width: channels of the seed head's conv rounds (512 in Clay).
        head: ``seed`` (Clay's head, seed-checkpoint compatible) or ``fusion`` (patch grid +
            full-resolution pixel branch); see :mod:`training.models.head`.
        head_options: constructor options of the fusion head (``pixel_channels``,
            ``context_channels``, ``context_out``, ``fuse_channels``, ``feature_layers``).
        encoder_weights: path/URI of Clay encoder weights (official ``.ckpt``, our exports of
            the encoder, ``.safetensors``); None keeps the random init (only sensible with
            ``freeze_encoder=False``).
        freeze_encoder: keep the encoder frozen and in eval mode (the Clay recipe).
        features_only: build only the head; batches must carry ``features``. Saves the
            encoder's memory when training from a feature cache.
        loss: ``focal``, ``ce``, or either plus the Lovasz-softmax IoU surrogate (``ce+lovasz``,
            ``focal+lovasz``); see :func:`training.models.losses.build_loss`.
        lovasz_weight: weight of the Lovasz-softmax term of a ``+lovasz`` loss.
        focal_gamma: focal loss gamma.
        class_weights: optional per-class loss weights (focal alpha / CE weight).
        ignore_index: class id excluded from loss and metrics (6 = No Data), or None.
        lr: AdamW learning rate (Clay: 1e-5).
        weight_decay: AdamW weight decay (Clay: 0.05).
        warmup_steps: linear warmup steps before the cosine decay.
        total_steps: steps of the schedule; None uses the trainer's estimate.
        min_lr_ratio: final LR as a fraction of ``lr``.
        class_names: names for per-class metrics; defaults to the Chesapeake table.
        model: a ready :class:`ClaySegmenter` (e.g. imported from the seed) to use instead of
            building one; not saved in the hyperparameters.
    """

    def __init__(
        self,
        preset: str = "large",
        num_classes: int = 7,
        head_width: int = 512,
        encoder_weights: str | None = None,
        freeze_encoder: bool = True,
        features_only: bool = False,
        loss: str = "focal",
        focal_gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        class_names: Sequence[str] | None = None,
        model: ClaySegmenter | None = None,
        head: str = DEFAULT_HEAD,
        head_options: Mapping[str, Any] | None = None,
        lovasz_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if class_names is None:
            from core.classes import CLASS_NAMES

            class_names = CLASS_NAMES[:num_classes] if num_classes <= len(CLASS_NAMES) else None
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {num_classes} classes")
        self._given_model = model
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self.epoch_metrics: dict[str, dict[str, Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        if self._given_model is not None:
            self.model = self._given_model
        elif hp.features_only:
            meta = build_encoder(hp.preset, device="meta")
            self.model = ClaySegmenter(None, self._build_head(meta.dim, meta.patch_size))
        else:
            encoder = build_encoder(hp.preset)
            if hp.encoder_weights:
                load_encoder(encoder, load_encoder_state_dict(hp.encoder_weights))
            self.model = ClaySegmenter(encoder, self._build_head(encoder.dim, encoder.patch_size))
        self._given_model = None
        if self.model.encoder is not None and hp.freeze_encoder:
            self.model.encoder.requires_grad_(False)
            self.model.encoder.eval()

    def _build_head(self, dim: int, patch_size: int = 8) -> nn.Module:
        hp = self.hparams
        options = dict(hp.head_options or {})
        return make_head(hp.head, dim, patch_size, hp.num_classes, hp.head_width, options)

    def configure_losses(self) -> None:
        hp = self.hparams
        self.criterion = build_loss(
            hp.loss, hp.focal_gamma, hp.class_weights, hp.ignore_index, lovasz_weight=hp.lovasz_weight
        )

    def configure_metrics(self) -> None:
        # Predictions are argmax ids and the loss has already refused out-of-range targets, so
        # the metrics skip their own per-step input checks (a torch.unique over every pixel).
        metrics = build_metrics(self.hparams.num_classes, self.hparams.ignore_index, validate_args=False)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def train(self, mode: bool = True) -> SegmentationTask:
        """Keep a frozen encoder in eval mode whatever the trainer asks."""
        super().train(mode)
        if self.hparams.freeze_encoder and self.model.encoder is not None:
            self.model.encoder.eval()
        return self

    # -- forward -------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, K, H, W) from a batch with ``features`` (and ``pixels``) or ``image``."""
        if "features" in batch:
            return self.model.forward_from_features(batch["features"], batch.get("pixels"))
        if "image" not in batch:
            raise ValueError(f"batch needs an 'image' or a 'features' entry, got keys {sorted(batch)}")
        if self.model.encoder is None:
            raise ValueError("this task was built with features_only=True; pass 'features', not 'image'")
        if self.hparams.freeze_encoder:
            with torch.no_grad():
                features = self.model.forward_features(batch["image"])  # (B, dim, h, w)
            return self.model.forward_from_features(features, batch["image"])
        return self.model(batch["image"])

    def _shared_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        mask = batch["mask"].long()  # (B, H, W)
        logits = self.logits(batch)  # (B, K, H, W)
        if logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"mask is {tuple(mask.shape[-2:])} but logits are {tuple(logits.shape[-2:])}")
        loss = self.criterion(logits, mask)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=len(mask),
        )
        getattr(self, f"{stage}_metrics").update(logits.argmax(1), mask)
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.logits(batch).argmax(1)

    # -- epoch metrics -------------------------------------------------------------------
    def _log_epoch(self, stage: str) -> None:
        collection: MetricCollection = getattr(self, f"{stage}_metrics")
        if not any(m.update_called for m in collection.values(copy_state=False)):
            return  # e.g. a stage with no batches
        computed = {k.removeprefix(f"{stage}/"): v for k, v in collection.compute().items()}
        result = metrics_to_dict(computed, self.class_names, self.hparams.ignore_index)
        scalars = {f"{stage}/{k}": result[k] for k in ("miou", "weighted_iou", "f1")}
        for name, value in result["per_class_iou"].items():
            if value is not None:
                scalars[f"{stage}/iou/{name}"] = value
        self.log_dict(scalars)
        self.epoch_metrics[stage] = result
        collection.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter is frozen")
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def segmenter(self, encoder: nn.Module | None = None) -> ClaySegmenter:
        """The trained :class:`ClaySegmenter`; a features-only task needs the ``encoder`` it
        was trained on (for export)."""
        if self.model.encoder is not None:
            return self.model
        if encoder is None:
            raise ValueError("this task trained the head only; pass the encoder used for its features")
        return ClaySegmenter(encoder, self.model.head, self.model.wavelengths.tolist(), float(self.model.gsd))

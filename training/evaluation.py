"""Held-out evaluation on cached features: model metrics, a majority-class baseline on the
same pixels, and the pictures people look at (confusion matrix, image | truth | prediction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rasterio.windows import Window

from training.data.classes import CLASS_NAMES, CLASSES
from training.data.naip import open_naip
from training.data.preview import colorize, stretch_rgb
from training.features import CachedFeatures
from training.models.head import ClaySegmenter
from training.module import build_metrics, metrics_to_dict


@dataclass
class EvaluationReport:
    """Metrics (model + ``majority_baseline``) and a few sample chips for pictures."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


def majority_class(train_class_fractions: list[float], ignore_index: int | None) -> int:
    """The most frequent training class (never the ignored No Data class)."""
    fractions = np.asarray(train_class_fractions, dtype=float)
    if ignore_index is not None and 0 <= ignore_index < len(fractions):
        fractions[ignore_index] = -1.0
    return int(fractions.argmax())


@torch.inference_mode()
def evaluate_cached(
    model: ClaySegmenter,
    split_uri: str,
    train_class_fractions: list[float],
    ignore_index: int | None = None,
    batch_size: int = 16,
    num_samples: int = 4,
) -> EvaluationReport:
    """Evaluate a (head-only) model on a cached split against the majority-class baseline."""
    data = CachedFeatures(split_uri)
    num_classes = model.num_classes
    model_metrics = build_metrics(num_classes, ignore_index)
    baseline_metrics = build_metrics(num_classes, ignore_index)
    majority = majority_class(train_class_fractions, ignore_index)
    model.eval()
    candidates: list[tuple[int, int, np.ndarray]] = []
    for start in range(0, len(data), batch_size):
        features = data.features[start : start + batch_size].float()  # (B, dim, h, w)
        target = data.labels[start : start + batch_size].long()  # (B, S, S)
        pred = model.forward_from_features(features).argmax(1)  # (B, S, S)
        model_metrics.update(pred, target)
        baseline_metrics.update(torch.full_like(target, majority), target)
        for i in range(len(pred)):
            # Chips with many classes make the most telling pictures.
            candidates.append((len(torch.unique(target[i])), start + i, pred[i].numpy().astype(np.uint8)))

    metrics = metrics_to_dict(model_metrics.compute(), CLASS_NAMES[:num_classes], ignore_index)
    baseline = metrics_to_dict(baseline_metrics.compute(), CLASS_NAMES[:num_classes], ignore_index)
    baseline.pop("confusion_matrix")
    metrics["majority_baseline"] = {"class": CLASS_NAMES[majority], **baseline}
    metrics["chips"] = len(data)
    metrics["scenes"] = sorted({w["scene_id"] for w in data.windows})

    candidates.sort(key=lambda c: (-c[0], c[1]))
    samples = []
    for _, index, pred in candidates[:num_samples]:
        window = data.windows[index]
        with open_naip(window["image_uri"]) as scene:
            image = scene.read(window=Window(window["col"], window["row"], window["size"], window["size"]))
        samples.append(
            {"image": image, "truth": data.labels[index].numpy(), "prediction": pred, "window": window}
        )
    return EvaluationReport(metrics, samples)


def render_confusion_matrix(metrics: dict[str, Any]) -> plt.Figure:
    """Row-normalised confusion matrix (rows = truth) with counts in the cells."""
    matrix = np.asarray(metrics["confusion_matrix"], dtype=float)
    names = list(metrics["per_class_iou"].keys())
    keep = [i for i in range(len(names)) if matrix[i].sum() > 0 or matrix[:, i].sum() > 0]
    matrix = matrix[np.ix_(keep, keep)]
    labels = [names[i] for i in keep]
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(keep) + 2, 1.1 * len(keep) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for r in range(len(keep)):
        for c in range(len(keep)):
            ax.text(
                c,
                r,
                f"{rows[r, c]:.2f}",
                ha="center",
                va="center",
                color="white" if rows[r, c] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(keep)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(keep)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"Held-out confusion matrix (mIoU {metrics['miou']:.3f})")
    fig.tight_layout()
    return fig


def render_samples(report: EvaluationReport, limit: int | None = None) -> list[plt.Figure]:
    """One figure per sample chip: image | truth | prediction, coloured by the class table."""
    figures = []
    legend = [plt.Rectangle((0, 0), 1, 1, color=np.array(c.color) / 255) for c in CLASSES]
    for sample in report.samples[:limit]:
        fig, axes = plt.subplots(1, 3, figsize=(11, 4))
        valid = sample["image"].any(axis=0)
        panels = [
            ("image (RGB)", stretch_rgb(sample["image"], valid)),
            ("truth", colorize(sample["truth"])),
            ("prediction", colorize(sample["prediction"])),
        ]
        for ax, (title, picture) in zip(axes, panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
        w = sample["window"]
        fig.suptitle(f"{w['scene_id']} row {w['row']} col {w['col']}", fontsize=9)
        fig.legend(
            legend,
            [c.name for c in CLASSES],
            loc="lower center",
            ncol=len(CLASSES),
            fontsize=7,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        figures.append(fig)
    return figures

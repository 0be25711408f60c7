"""Held-out evaluation, and the pictures people look at (confusion matrix, image | truth | prediction).

Two evaluations:

- :func:`evaluate_served` (what gates promotion): whole held-out scenes through the scene
  predictor the infer Lambda runs (:func:`inference.predict.predict_scene`: sliding window,
  blending, nodata handling, the chain's chip size and overlap) with the exported artifacts,
  for the served path (the runtime the infer Lambda's dispatcher picks on this CPU) and for the
  fp32 export (torch); their pixel agreement;
  the majority-class and per-pixel spectral baselines (:mod:`training.baselines`) on the same
  pixels; and the class mix and confidence of the served predictions, the drift reference of
  the model version.
- :func:`evaluate_cached`: per chip on the feature cache (no blending); the fast signal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rasterio.windows import Window

from core.classes import CLASS_NAMES, CLASSES, NODATA_CLASS_ID, colorize
from core.naip import open_naip, stretch_rgb
from training.baselines import PixelLogisticRegression, majority_class
from training.data.chesapeake import SceneRecord, read_label
from training.features import CachedFeatures
from training.models.head import ClaySegmenter
from training.module import build_metrics, confusion_counts, metrics_from_confusion, metrics_to_dict

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationReport",
    "evaluate_cached",
    "evaluate_foreign",
    "evaluate_foreign_families",
    "evaluate_served",
    "majority_class",
    "patch_majority_counts",
    "render_confusion_matrix",
    "render_samples",
    "served_throughput",
]


@dataclass
class EvaluationReport:
    """Metrics (model + ``majority_baseline``) and a few sample chips for pictures."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


@torch.inference_mode()
def evaluate_cached(
    model: ClaySegmenter,
    split_uri: str,
    train_class_fractions: list[float],
    ignore_index: int | None = None,
    batch_size: int = 16,
    num_samples: int = 4,
) -> EvaluationReport:
    """Evaluate a (head-only) model per chip on a cached split, beside the majority-class baseline."""
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
        pixels = data.pixels(slice(start, start + batch_size)) if model.needs_pixels else None
        pred = model.forward_from_features(features, pixels).argmax(1)  # (B, S, S)
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


def _scene_samples(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, scene_id: str, size: int, per_scene: int
) -> list[tuple[int, dict[str, Any]]]:
    """The ``per_scene`` chip windows of a scene with the most classes (roads first), for pictures."""
    height, width = truth.shape
    scored = []
    for row in range(0, max(1, height - size + 1), size):
        for col in range(0, max(1, width - size + 1), size):
            t = truth[row : row + size, col : col + size]
            counts = np.bincount(t.ravel(), minlength=len(CLASS_NAMES))
            present = int((counts[:NODATA_CLASS_ID] > 0.002 * t.size).sum())
            scored.append((present, int(counts[5]), row, col))  # 5 = Impervious (road)
    scored.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    out = []
    for present, _, row, col in scored[:per_scene]:
        window = {"scene_id": scene_id, "row": row, "col": col, "size": size}
        out.append(
            (
                present,
                {
                    "image": image[:, row : row + size, col : col + size].copy(),
                    "truth": truth[row : row + size, col : col + size].copy(),
                    "prediction": prediction[row : row + size, col : col + size].copy(),
                    "window": window,
                },
            )
        )
    return out


def _check_class_ids(ids: np.ndarray, num_classes: int, what: str) -> None:
    """Raise unless every id is in ``[0, num_classes)`` (the metrics then skip their own checks)."""
    if ids.size and int(ids.max()) >= num_classes:
        raise ValueError(f"{what} holds class id {int(ids.max())}; the model has {num_classes} classes")


def served_throughput(predictor: Any, seconds: float, chips: int, chip_size: int) -> dict[str, Any]:
    """What the served backend measured on the held-out scenes, for sizing inference blocks.

    ``seconds_per_chip`` is the scene predictor's wall time (reading, normalising, the model,
    blending) over the chips it ran, on ``threads`` intra-op threads of ``cpu``.
    """
    from inference.runtime import default_num_threads
    from inference.runtime_cpu import detect_cpu

    threads = getattr(predictor, "num_threads", None)
    session = getattr(predictor, "session", None)
    if threads is None and hasattr(session, "get_session_options"):  # an ONNX Runtime session
        threads = session.get_session_options().intra_op_num_threads or None
    threads = threads or default_num_threads()
    return {
        "seconds_per_chip": seconds / chips if chips else None,
        "seconds": round(seconds, 3),
        "chips": int(chips),
        "chip_size": int(chip_size),
        "threads": int(threads),
        "cpu": detect_cpu().model,
        "backend": str(getattr(predictor, "backend", type(predictor).__name__)),
    }


def evaluate_served(
    predictors: dict[str, Any],
    scenes: list[SceneRecord],
    train_class_fractions: list[float],
    pixel_baseline: PixelLogisticRegression | None = None,
    ignore_index: int | None = None,
    served: str = "onnx",
    reference: str = "fp32",
    chip_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    num_samples: int = 4,
) -> EvaluationReport:
    """Held-out metrics from whole scenes through the inference scene predictor.

    Args:
        predictors: loaded :class:`inference.runtime.Predictor` per name, e.g. ``{"onnx":
            OnnxPredictor(model.int8.onnx), "fp32": TorchPredictor(model.safetensors)}``.
        scenes: the held-out scenes (image + label).
        train_class_fractions: training label mix (for the majority-class baseline).
        pixel_baseline: the fitted per-pixel spectral baseline, or None to skip it.
        ignore_index: label id left out of the metrics (No Data).
        served: the predictor whose metrics are the headline (and gate promotion).
        reference: the predictor the served one is compared with pixel by pixel.
        chip_size, overlap, batch_size: sliding-window settings; None takes the infer chain's
            defaults (``inference.settings.ChainDefaults``), so this is the Lambda's path.
        num_samples: sample chips kept for pictures.

    Returns:
        A report whose ``metrics`` are the served predictor's (``miou``, ``per_class_iou``,
        ...) plus ``backends`` (every predictor's metrics), ``served_vs_reference_agreement``,
        ``majority_baseline``, ``pixel_baseline``, ``lead_over_pixel_baseline``,
        ``prediction_reference`` (class mix and confidence of the served predictions) and
        ``throughput`` (the served backend's measured seconds per chip; :func:`served_throughput`).
    """
    if served not in predictors:
        raise ValueError(f"served predictor {served!r} not among {sorted(predictors)}")
    if not scenes:
        raise ValueError("no held-out scenes to evaluate")
    from inference.settings import ChainDefaults

    defaults = ChainDefaults()
    window = _Window(
        chip_size or defaults.chip_size,
        defaults.overlap if overlap is None else overlap,
        batch_size or defaults.batch_size,
    )
    num_classes = int(predictors[served].num_classes)
    majority = majority_class(train_class_fractions, ignore_index)
    tally = _ServedTally(num_classes, list(predictors), pixel_baseline is not None)
    candidates: list[tuple[int, dict[str, Any]]] = []
    for scene in scenes:
        truth = read_label(scene.label_uri)  # (H, W) ids 0..6 (read_label refuses other values)
        _check_class_ids(truth, num_classes, f"labels of {scene.scene_id}")
        preds = _predict_with_each(predictors, scene, num_classes, window, tally)
        with open_naip(scene.image_uri) as src:
            image = src.read()
        tally.add_scene(
            preds, truth, image, scene.scene_id, served, reference, majority, pixel_baseline, ignore_index
        )
        candidates += _scene_samples(
            image, truth, preds[served].classes, scene.scene_id, window.chip_size, num_samples
        )
    metrics = _served_metrics(tally, predictors, scenes, served, reference, majority, ignore_index, window)
    candidates.sort(key=lambda c: -c[0])
    return EvaluationReport(metrics, [sample for _, sample in candidates[:num_samples]])


@dataclass(frozen=True)
class _Window:
    """Sliding-window settings of the scene predictor."""

    chip_size: int
    overlap: int
    batch_size: int


@dataclass
class _ServedTally:
    """What :func:`evaluate_served` sums over its scenes.

    One confusion matrix per predictor and baseline (a bincount per scene; the metrics come from
    it with torchmetrics' own reductions, since torchmetrics' update passes are slow on whole
    scenes; every input is checked once for class ids in ``[0, num_classes)``, as the bincount
    needs), the served-vs-reference agreement, the served predictions' class mix and
    confidence, and each predictor's time and chips.
    """

    num_classes: int
    predictor_names: list[str]
    with_pixel_baseline: bool
    agree: int = 0
    compared: int = 0
    confidence_sum: float = 0.0
    entropy_sum: float = 0.0
    low_count: int = 0

    def __post_init__(self) -> None:
        self.confusion = {name: self._counts() for name in self.predictor_names}
        self.baseline_confusion = self._counts()
        self.pixel_confusion = self._counts() if self.with_pixel_baseline else None
        self.class_counts = np.zeros(self.num_classes, dtype=np.int64)
        self.seconds: dict[str, float] = dict.fromkeys(self.predictor_names, 0.0)
        self.chips_run: dict[str, int] = dict.fromkeys(self.predictor_names, 0)

    def _counts(self) -> np.ndarray:
        return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add_scene(
        self,
        preds: dict[str, Any],
        truth: np.ndarray,
        image: np.ndarray,
        scene_id: str,
        served: str,
        reference: str,
        majority: int,
        pixel_baseline: PixelLogisticRegression | None,
        ignore_index: int | None,
    ) -> None:
        """Count one scene's predictions, baselines and agreement on the served valid pixels."""
        num_classes = self.num_classes
        main = preds[served]
        valid = main.valid
        target = truth[valid]
        for name, pred in preds.items():
            self.confusion[name] += confusion_counts(pred.classes[valid], target, num_classes, ignore_index)
        self.baseline_confusion += confusion_counts(
            np.full_like(target, majority), target, num_classes, ignore_index
        )
        if self.pixel_confusion is not None:
            pixel_pred = pixel_baseline.predict(image)[valid]
            _check_class_ids(pixel_pred, num_classes, f"pixel baseline of {scene_id}")
            self.pixel_confusion += confusion_counts(pixel_pred, target, num_classes, ignore_index)
        if reference in preds and reference != served:
            self.agree += int((preds[reference].classes[valid] == main.classes[valid]).sum())
            self.compared += int(valid.sum())
        self.class_counts += main.class_counts
        self.confidence_sum += main.confidence_sum
        self.entropy_sum += main.entropy_sum
        self.low_count += main.low_confidence_count


def _predict_with_each(
    predictors: dict[str, Any], scene: SceneRecord, num_classes: int, window: _Window, tally: _ServedTally
) -> dict[str, Any]:
    """Every predictor's scene prediction (checked class ids), its time and chips counted."""
    from inference.predict import predict_scene

    preds = {}
    for name, predictor in predictors.items():
        pred = predict_scene(
            predictor,
            scene.image_uri,
            chip_size=window.chip_size,
            overlap=window.overlap,
            batch_size=window.batch_size,
        )
        _check_class_ids(pred.classes[pred.valid], num_classes, f"{name} prediction of {scene.scene_id}")
        preds[name] = pred
        tally.seconds[name] += pred.seconds
        tally.chips_run[name] += pred.n_chips
        log.info("[evaluate] %s: %s in %.1f s (%d chips)", scene.scene_id, name, pred.seconds, pred.n_chips)
    return preds


def _served_metrics(
    tally: _ServedTally,
    predictors: dict[str, Any],
    scenes: list[SceneRecord],
    served: str,
    reference: str,
    majority: int,
    ignore_index: int | None,
    window: _Window,
) -> dict[str, Any]:
    """The report's metrics from the tally: the served predictor's, then every backend's, the
    baselines, the agreement, the prediction reference and the throughput."""
    names = CLASS_NAMES[: tally.num_classes]
    backends = {name: metrics_from_confusion(cm, names, ignore_index) for name, cm in tally.confusion.items()}
    metrics = dict(backends[served])
    metrics["backend"] = served
    metrics["backends"] = {
        name: {k: v for k, v in result.items() if k != "confusion_matrix"}
        for name, result in backends.items()
    }
    for name in backends:
        metrics["backends"][name]["seconds"] = round(tally.seconds[name], 2)
        metrics["backends"][name]["chips"] = tally.chips_run[name]
    metrics["throughput"] = served_throughput(
        predictors[served], tally.seconds[served], tally.chips_run[served], window.chip_size
    )
    metrics["served_vs_reference_agreement"] = tally.agree / tally.compared if tally.compared else None
    metrics["agreement_reference"] = reference if tally.compared else None
    baseline = metrics_from_confusion(tally.baseline_confusion, names, ignore_index)
    baseline.pop("confusion_matrix")
    metrics["majority_baseline"] = {"class": CLASS_NAMES[majority], **baseline}
    if tally.pixel_confusion is not None:
        pixel = metrics_from_confusion(tally.pixel_confusion, names, ignore_index)
        pixel.pop("confusion_matrix")
        metrics["pixel_baseline"] = {"model": "logistic regression on 4 bands + NDVI", **pixel}
        metrics["lead_over_pixel_baseline"] = metrics["miou"] - pixel["miou"]
    n = int(tally.class_counts.sum())
    metrics["prediction_reference"] = {
        "class_fractions": (tally.class_counts / max(n, 1)).tolist(),
        "mean_max_softmax": tally.confidence_sum / n if n else None,
        "mean_entropy": tally.entropy_sum / n if n else None,
        "low_confidence_share": tally.low_count / n if n else None,
        "pixels": n,
        "scenes": [s.scene_id for s in scenes],
        "backend": served,
    }
    metrics["scenes"] = [s.scene_id for s in scenes]
    metrics["sliding_window"] = {
        "chip_size": window.chip_size,
        "overlap": window.overlap,
        "batch_size": window.batch_size,
    }
    return metrics


#: Smallest uniform patch (px) counted by the within-patch majority share.
MIN_PATCH_AREA = 64


def patch_majority_counts(truth: np.ndarray, pred: np.ndarray, keep: np.ndarray) -> tuple[int, int]:
    """(pixels carrying their patch's majority prediction, pixels) over the uniform patches of
    ``truth``: its 4-connected single-class regions of at least :data:`MIN_PATCH_AREA` kept pixels."""
    from scipy import ndimage

    ids = np.zeros(truth.shape, dtype=np.int64)
    count = 0
    for value in np.unique(truth[keep]):
        labelled, n = ndimage.label(keep & (truth == value))
        ids[labelled > 0] = labelled[labelled > 0] + count
        count += n
    inside = ids > 0
    num_classes = int(max(pred.max(initial=0), truth.max(initial=0))) + 1
    votes = np.bincount(ids[inside] * num_classes + pred[inside], minlength=(count + 1) * num_classes)
    votes = votes.reshape(count + 1, num_classes)[1:]
    area = votes.sum(1)
    big = area >= MIN_PATCH_AREA
    return int(votes.max(1)[big].sum()), int(area[big].sum())


def evaluate_foreign(
    predictor: Any,
    scenes: list[SceneRecord],
    ignore_index: int | None = None,
    chip_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Pixel accuracy, per-class recall and within-patch majority share of ``predictor`` on
    scenes of another family (:mod:`training.data.foreign`), through the same scene predictor
    as :func:`evaluate_served`."""
    from inference.predict import predict_scene
    from inference.settings import ChainDefaults

    defaults = ChainDefaults()
    num_classes = int(predictor.num_classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    majority, patch_pixels = 0, 0
    for scene in scenes:
        truth = read_label(scene.label_uri)
        pred = predict_scene(
            predictor,
            scene.image_uri,
            chip_size=chip_size or defaults.chip_size,
            overlap=defaults.overlap if overlap is None else overlap,
            batch_size=batch_size or defaults.batch_size,
        )
        keep = pred.valid & (truth != ignore_index if ignore_index is not None else True)
        confusion += np.bincount(
            truth[keep].astype(np.int64) * num_classes + pred.classes[keep], minlength=num_classes**2
        ).reshape(num_classes, num_classes)
        got, pixels = patch_majority_counts(truth, pred.classes.astype(np.int64), keep)
        majority, patch_pixels = majority + got, patch_pixels + pixels
    total = int(confusion.sum())
    support = confusion.sum(1)
    return {
        "pixel_accuracy": float(np.trace(confusion) / total) if total else None,
        "patch_majority_share": majority / patch_pixels if patch_pixels else None,
        "per_class_recall": {
            CLASS_NAMES[i]: float(confusion[i, i] / support[i]) for i in range(num_classes) if support[i]
        },
        "pixels": total,
        "scenes": [s.scene_id for s in scenes],
    }


def evaluate_foreign_families(
    predictor: Any, root_uri: str, seed: int, ignore_index: int | None = None, **window: Any
) -> dict[str, Any]:
    """:func:`evaluate_foreign` on every family of :data:`training.data.foreign.FOREIGN_FAMILIES`
    (scenes written under ``root_uri/<family>``), with the worst family's figures on top: a
    model is as robust as its worst family, not its mean."""
    from core import storage
    from training.data.foreign import FOREIGN_FAMILIES, write_family_scenes

    results = {}
    for family in FOREIGN_FAMILIES:
        scenes = write_family_scenes(storage.join(root_uri, family.name), family, seed=seed)
        results[family.name] = {
            "family": family.describe(),
            **evaluate_foreign(predictor, scenes, ignore_index=ignore_index, **window),
        }
        log.info(
            "[foreign] %-14s pixel accuracy %.4f, within-patch majority %.4f",
            family.name,
            results[family.name]["pixel_accuracy"],
            results[family.name]["patch_majority_share"],
        )
    worst = min(results, key=lambda name: results[name]["pixel_accuracy"])
    least_consistent = min(results, key=lambda name: results[name]["patch_majority_share"])
    return {
        "worst_family": worst,
        "pixel_accuracy": results[worst]["pixel_accuracy"],
        "least_consistent_family": least_consistent,
        "patch_majority_share": results[least_consistent]["patch_majority_share"],
        "families": results,
    }


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

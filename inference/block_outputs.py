"""A block's outputs in one file, and a scene assembled from its blocks.

A block (:func:`inference.predict.predict_block`) writes its class ids, confidence and the
sums the monitor needs (class counts, band histograms, confidence, entropy and low-confidence
sums over its valid pixels) to one compressed ``.npz``. :func:`assemble` places every block's
rasters at its window in scene-sized arrays and adds the sums. Block cores partition the
scene, so the sums are the exact scene sums and the result is the same kind of
:class:`~inference.predict.ScenePrediction` a one-call prediction returns.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from core.classes import NODATA_CLASS_ID
from core.naip import open_naip
from inference.predict import ScenePrediction

__all__ = ["assemble", "from_bytes", "to_bytes"]

_SUMS = ("confidence_sum", "low_confidence_count", "low_confidence_threshold", "entropy_sum")
_COUNTS = ("n_chips", "n_chips_skipped")


def to_bytes(pred: ScenePrediction) -> bytes:
    """The block's rasters and sums as ``.npz`` bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        classes=pred.classes,
        confidence=pred.confidence,
        class_counts=pred.class_counts,
        band_counts=pred.band_counts,
        window=np.asarray(pred.window, dtype=np.int64),
        seconds=np.float64(pred.seconds),
        chip_size=np.int64(pred.chip_size),
        overlap=np.int64(pred.overlap),
        **{name: np.float64(getattr(pred, name)) for name in _SUMS},
        **{name: np.int64(getattr(pred, name)) for name in _COUNTS},
    )
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """The arrays :func:`to_bytes` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def assemble(
    image_uri: str, blocks: Sequence[tuple[Sequence[int], bytes]], max_pixels: int | None = None
) -> ScenePrediction:
    """The scene prediction of ``image_uri`` from its blocks' ``(window, npz bytes)``.

    Raises:
        ValueError: a block's file holds another window than the ledger's, or the windows do
            not cover the scene exactly once.
    """
    with open_naip(image_uri, max_pixels=max_pixels) as scene:
        height, width = scene.shape
        crs, transform, profile = scene.crs, scene.transform, scene.profile
    classes = np.full((height, width), NODATA_CLASS_ID, dtype=np.uint8)
    confidence = np.zeros((height, width), dtype=np.uint8)
    covered = 0
    total: dict[str, float | np.ndarray] = {}
    meta: dict[str, int] = {}
    for window, data in blocks:
        part = from_bytes(data)
        y, x, h, w = (int(v) for v in window)
        if tuple(int(v) for v in part["window"]) != (y, x, h, w) or part["classes"].shape != (h, w):
            raise ValueError(
                f"block file holds window {part['window'].tolist()}, not the planned {list(window)}"
            )
        if y < 0 or x < 0 or y + h > height or x + w > width:
            raise ValueError(f"block window {list(window)} lies outside the {height} x {width} scene")
        classes[y : y + h, x : x + w] = part["classes"]
        confidence[y : y + h, x : x + w] = part["confidence"]
        covered += h * w
        for name in ("class_counts", "band_counts", "seconds", *_SUMS, *_COUNTS):
            if name == "low_confidence_threshold":
                total[name] = float(part[name])
                continue
            total[name] = total.get(name, 0) + part[name]
        meta = {"chip_size": int(part["chip_size"]), "overlap": int(part["overlap"])}
    if covered != height * width:
        raise ValueError(f"the blocks cover {covered} pixels of a {height} x {width} scene")
    return ScenePrediction(
        classes=classes,
        confidence=confidence,
        valid=confidence > 0,  # a valid pixel's confidence is at least 1 (1/255)
        class_counts=np.asarray(total["class_counts"], dtype=np.int64),
        confidence_sum=float(total["confidence_sum"]),
        low_confidence_count=int(total["low_confidence_count"]),
        low_confidence_threshold=float(total["low_confidence_threshold"]),
        entropy_sum=float(total["entropy_sum"]),
        band_counts=np.asarray(total["band_counts"], dtype=np.int64),
        crs=crs,
        transform=transform,
        profile=profile,
        source_uri=str(image_uri),
        n_chips=int(total["n_chips"]),
        n_chips_skipped=int(total["n_chips_skipped"]),
        seconds=float(total["seconds"]),
        window=(0, 0, height, width),
        **meta,
    )

"""Test helpers for the inference core: a per-pixel numpy predictor and tiny Clay exports."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

from core.classes import NUM_CLASSES


class LocalPredictor:
    """A context-free stand-in model: per-pixel softmax of a fixed linear map of the bands.

    Its output at a pixel depends on that pixel only, so tiled and one-pass predictions must
    agree exactly; it records every batch it sees.
    """

    backend = "fake"
    patch_size = 8

    def __init__(self, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.num_classes = num_classes
        self.metadata: dict = {}
        self.weights = rng.normal(0, 2.0, size=(num_classes, 4)).astype(np.float32)
        self.bias = rng.normal(0, 0.5, size=num_classes).astype(np.float32)
        self.batches: list[tuple[int, ...]] = []

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        self.batches.append(chips.shape)
        logits = np.einsum("kc,bchw->bkhw", self.weights, chips) + self.bias[None, :, None, None]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@functools.cache
def tiny_export(content_scale: float | None = 1000.0, seed: int = 0, reference_stats: bool = False) -> str:
    """A tiny random Clay segmenter saved with ``save_export``; cached per process and arguments.

    A freshly initialised Clay has a 0.02-scaled patch embedding, so its tokens are mostly the
    position code and its softmax nearly uniform: its argmax follows where a pixel sits in the
    chip rather than the image, and no tiling can reproduce a one-pass prediction (measured
    ~67 % agreement, ~64 % on tile borders). Trained models decide from content; scaling the
    folded patch embedding by ``content_scale`` gives a random model that does too, keeping the
    real architecture (global attention, zero-padded convs at chip borders, pixel shuffle).
    ``content_scale=None`` keeps the model as initialised, dynamic patch embedding included (the
    chain tests' champion). ``reference_stats`` stores drift reference statistics computed from
    four synthetic chips, as the training pipeline stores them.
    """
    import torch

    from training.models.export import save_export
    from training.models.head import build_segmenter

    torch.manual_seed(seed)
    model = build_segmenter("tiny", head_width=32).eval()
    if content_scale is not None:
        model = model.fold_patch_embedding()
        with torch.no_grad():
            model.encoder.patch_embedding.proj.weight.mul_(content_scale)
            model.encoder.patch_embedding.proj.bias.mul_(content_scale)
    stats = _synthetic_reference_stats() if reference_stats else None
    folder = Path(tempfile.mkdtemp(prefix="tiny-export-"))
    path = folder / f"tiny-{content_scale}-{seed}-{'stats' if reference_stats else 'plain'}.safetensors"
    save_export(model, str(path), reference_stats=stats, extra={"test": "tiny random"})
    return str(path)


def _synthetic_reference_stats() -> dict:
    """Reference statistics of four 64 px synthetic scenes and their labels (model class ids)."""
    from core.classes import remap_lc
    from training.data.stats import StatsAccumulator
    from training.data.synthetic import generate_scene

    scenes = [generate_scene(seed, 64) for seed in range(4)]
    chips = np.stack([image for image, _ in scenes])  # (4, 4, 64, 64) uint8
    labels = np.stack([remap_lc(lc) for _, lc in scenes])
    accumulator = StatsAccumulator()
    accumulator.update(chips, chips.any(axis=1), labels)
    return accumulator.result().to_dict()


def border_mask(
    shape: tuple[int, int], ys: tuple[int, ...], xs: tuple[int, ...], chip: int, band: int = 8
) -> np.ndarray:
    """True within ``band`` pixels of any chip edge that lies inside the scene."""
    h, w = shape
    rows = np.zeros(h, dtype=bool)
    cols = np.zeros(w, dtype=bool)
    for offsets, mask, n in ((ys, rows, h), (xs, cols, w)):
        edges = [o for o in offsets[1:]] + [o + chip for o in offsets[:-1]]
        for e in edges:
            if 0 < e < n:
                mask[max(0, e - band) : e + band] = True
    return rows[:, None] | cols[None, :]


@functools.cache
def tiny_predictor(content_scale: float = 1000.0, seed: int = 0):
    """A single-threaded :class:`~training.models.predictor.TorchPredictor` over :func:`tiny_export`."""
    from training.models.predictor import TorchPredictor

    return TorchPredictor(tiny_export(content_scale, seed), num_threads=1)

"""Reference models every evaluation is compared with: the majority class and a per-pixel
spectral logistic regression.

The spectral baseline is what a model that sees no spatial context can do: a multinomial
logistic regression on each pixel's four bands (Clay-normalised) plus its NDVI, fitted on the
same training pixels as the model (the training chips of the feature cache), in seconds of CPU.
A segmentation model that does not beat it has not learned anything that needs a neighbourhood.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from core.naip import normalize

__all__ = [
    "PixelLogisticRegression",
    "fit_pixel_baseline",
    "majority_class",
    "spectral_features",
]

log = logging.getLogger(__name__)

#: Inputs of the spectral baseline: the four normalised bands and NDVI.
SPECTRAL_FEATURES = ("red", "green", "blue", "nir", "ndvi")


def majority_class(train_class_fractions: list[float], ignore_index: int | None) -> int:
    """The most frequent training class (never the ignored No Data class)."""
    fractions = np.asarray(train_class_fractions, dtype=float)
    if ignore_index is not None and 0 <= ignore_index < len(fractions):
        fractions[ignore_index] = -1.0
    return int(fractions.argmax())


def spectral_features(image: np.ndarray) -> np.ndarray:
    """Per-pixel features (..., 5) float32 of uint8 NAIP ``(4, ...)``: normalised bands + NDVI."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.shape[0] != 4:
        raise ValueError(f"expected uint8 NAIP shaped (4, ...), got {arr.dtype} {arr.shape}")
    flat = arr.reshape(4, 1, -1)  # normalize wants (..., 4, H, W)
    bands = normalize(flat).reshape(arr.shape)  # (4, ...)
    red, nir = arr[0].astype(np.float32), arr[3].astype(np.float32)
    ndvi = (nir - red) / (nir + red + 1.0)
    return np.moveaxis(np.concatenate([bands, ndvi[None]], axis=0), 0, -1).astype(np.float32)


@dataclass
class PixelLogisticRegression:
    """A fitted multinomial logistic regression on :func:`spectral_features`.

    Attributes:
        weight: (5, K) coefficients on standardised features.
        bias: (K,) intercepts.
        mean, std: (5,) feature standardisation.
    """

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.bias.shape[0])

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class ids uint8 ``(H, W)`` for a uint8 ``(4, H, W)`` image, in row blocks."""
        _, height, width = image.shape
        out = np.empty((height, width), dtype=np.uint8)
        step = max(1, 1_000_000 // max(width, 1))
        for y in range(0, height, step):
            x = (spectral_features(image[:, y : y + step]) - self.mean) / self.std  # (h, W, 5)
            out[y : y + step] = (x @ self.weight + self.bias).argmax(-1).astype(np.uint8)
        return out

    # -- the inference Predictor interface, so the baseline can run through the scene predictor --
    backend = "pixel-baseline"

    @property
    def metadata(self) -> dict:
        return {"model": "per-pixel logistic regression", **self.to_dict()}

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, K, S, S) for Clay-normalised float32 chips (B, 4, S, S)."""
        from core.naip import NAIP_MEANS, NAIP_STDS

        arr = np.asarray(chips, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[1] != 4:
            raise ValueError(f"chips must be (B, 4, S, S), got shape {arr.shape}")
        mean = np.asarray(NAIP_MEANS, dtype=np.float32).reshape(1, 4, 1, 1)
        std = np.asarray(NAIP_STDS, dtype=np.float32).reshape(1, 4, 1, 1)
        raw = arr * std + mean  # digital numbers again
        red, nir = raw[:, 0], raw[:, 3]
        ndvi = (nir - red) / (nir + red + 1.0)
        x = np.concatenate([arr, ndvi[:, None]], axis=1)  # (B, 5, S, S)
        x = (np.moveaxis(x, 1, -1) - self.mean) / self.std  # (B, S, S, 5)
        logits = x @ self.weight + self.bias  # (B, S, S, K)
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        return np.ascontiguousarray(np.moveaxis(p, -1, 1), dtype=np.float32)  # (B, K, S, S)

    def to_dict(self) -> dict:
        return {
            "features": list(SPECTRAL_FEATURES),
            "weight": self.weight.tolist(),
            "bias": self.bias.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


def fit_pixel_baseline(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    ignore_index: int | None = None,
    max_pixels: int = 500_000,
    seed: int = 0,
    weight_decay: float = 1e-4,
    iterations: int = 200,
) -> PixelLogisticRegression:
    """Fit the spectral baseline on training chips.

    Args:
        images: uint8 (N, 4, S, S) training chips.
        labels: uint8 (N, S, S) class ids.
        num_classes: K.
        ignore_index: class whose pixels are left out (No Data), or None.
        max_pixels: a seeded uniform sample of this many valid pixels is fitted (all if fewer).
        seed: sampling seed.
        weight_decay: L2 penalty on the coefficients.
        iterations: L-BFGS iterations (full batch).
    """
    if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"images (N, 4, S, S) and labels (N, S, S) expected, got {images.shape}, {labels.shape}"
        )
    flat_labels = labels.reshape(-1)
    valid = images.any(axis=1).reshape(-1)
    if ignore_index is not None:
        valid &= flat_labels != ignore_index
    index = np.flatnonzero(valid)
    if index.size == 0:
        raise ValueError("no labelled training pixels to fit the spectral baseline on")
    rng = np.random.default_rng(seed)
    if index.size > max_pixels:
        index = np.sort(rng.choice(index, size=max_pixels, replace=False))
    pixels = np.moveaxis(images, 1, -1).reshape(-1, 4)[index].T  # (4, M)
    x = spectral_features(pixels)  # (M, 5)
    y = flat_labels[index].astype(np.int64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + weight_decay * (weight**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    log.info("spectral baseline fitted on %d pixels (loss %.4f)", len(y), float(loss.detach()))
    return PixelLogisticRegression(
        weight=weight.detach().numpy().astype(np.float32),
        bias=bias.detach().numpy().astype(np.float32),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )

"""The reference models: majority class and the per-pixel spectral logistic regression."""

from __future__ import annotations

import numpy as np
import pytest

from core.naip import normalize
from training.baselines import fit_pixel_baseline, majority_class, spectral_features
from training.data.synthetic import SPECTRA


def _chips(seed: int, n: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Chips whose pixels take the synthetic class spectra plus noise (ids 0..5)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, (n, size, size)).astype(np.uint8)
    spectra = np.array([SPECTRA[k + 1] for k in range(6)], dtype=np.float32)  # (6, 4)
    images = spectra[labels].transpose(0, 3, 1, 2) + rng.normal(0, 4, (n, 4, size, size))
    return np.clip(np.rint(images), 1, 255).astype(np.uint8), labels


def test_majority_class_skips_the_ignored_class() -> None:
    assert majority_class([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.4], ignore_index=6) == 2
    assert majority_class([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.4], ignore_index=None) == 6


def test_spectral_features_are_bands_and_ndvi() -> None:
    image = np.array([[[100]], [[50]], [[20]], [[200]]], dtype=np.uint8)  # (4, 1, 1)
    x = spectral_features(image)
    assert x.shape == (1, 1, 5)
    np.testing.assert_allclose(x[0, 0, :4], normalize(image)[:, 0, 0], rtol=1e-6)
    assert x[0, 0, 4] == pytest.approx((200 - 100) / 301)
    with pytest.raises(ValueError, match="uint8"):
        spectral_features(image.astype(np.float32))


def test_pixel_baseline_learns_class_spectra_and_is_a_predictor() -> None:
    images, labels = _chips(0)
    model = fit_pixel_baseline(images, labels, num_classes=7, ignore_index=6, max_pixels=2000, seed=1)
    test_images, test_labels = _chips(1, n=1)
    pred = model.predict(test_images[0])
    assert pred.shape == test_labels[0].shape and pred.dtype == np.uint8
    assert (pred == test_labels[0]).mean() > 0.95
    # The Predictor interface gives the same classes from normalised chips.
    proba = model.predict_proba(normalize(test_images))
    assert proba.shape == (1, 7, 32, 32)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert (proba.argmax(1)[0] == pred).mean() > 0.999
    with pytest.raises(ValueError, match="no labelled"):
        fit_pixel_baseline(images, np.full_like(labels, 6), num_classes=7, ignore_index=6)

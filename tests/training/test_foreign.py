"""The foreign scene families: square patches of plain class spectra, other sizes, other CRSs."""

from __future__ import annotations

import numpy as np
import pytest

from core.naip import open_naip
from training.baselines import fit_pixel_baseline
from training.data.chesapeake import read_label
from training.data.foreign import (
    FOREIGN_FAMILIES,
    ForeignFamily,
    families,
    make_patch_scene,
    write_family_scenes,
)
from training.evaluation import evaluate_foreign, evaluate_foreign_families, patch_majority_counts


def test_patch_scenes_are_deterministic_georeferenced_and_another_family(tmp_path) -> None:
    a, b = make_patch_scene(3, 200), make_patch_scene(3, 200)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lc, b.lc)
    assert set(np.unique(a.lc)) <= {1, 2, 3, 4, 5, 6} and len(np.unique(a.lc)) >= 4
    family = ForeignFamily("tiny", sizes=(136,), crs="EPSG:32617")
    (record,) = write_family_scenes(str(tmp_path), family, seed=5)
    with open_naip(record.image_uri) as scene:
        assert scene.shape == (136, 136) and scene.crs.to_string() == "EPSG:32617"
    assert read_label(record.label_uri).max() <= 5  # model ids 0..5


def test_families_vary_one_thing_each() -> None:
    plain, noisy = families(["plain", "noisy"])
    a, b = make_patch_scene(1, 128, plain), make_patch_scene(1, 128, noisy)
    assert np.array_equal(a.lc, b.lc)  # the same patches, only the noise differs
    assert np.std(b.image.astype(float) - a.image) > 5
    shifted = make_patch_scene(1, 128, ForeignFamily("g", band_gain=0.1, band_offset=10.0))
    assert np.abs(shifted.image.mean((1, 2)) - a.image.mean((1, 2))).max() > 2
    assert len({f.name for f in FOREIGN_FAMILIES}) == len(FOREIGN_FAMILIES)
    assert len({f.crs for f in FOREIGN_FAMILIES}) >= 3
    with pytest.raises(ValueError, match="unknown foreign families"):
        families(["plain", "nope"])


def test_patch_majority_share_counts_each_patch_by_its_majority() -> None:
    truth = np.zeros((20, 20), dtype=np.int64)
    truth[:, 10:] = 1  # two 200-px patches
    pred = truth.copy()
    pred[0:5, 0:2] = 3  # 10 px of the left patch wrong: its majority still holds 190
    pred[:, 10:15] = 2  # the right patch split 100/100
    got, pixels = patch_majority_counts(truth, pred, np.ones_like(truth, dtype=bool))
    assert pixels == 400 and got == 190 + 100
    small = np.zeros((20, 20), dtype=np.int64)
    small[0:4, 0:4] = 1  # a 16-px patch is below the minimum area and not counted
    assert patch_majority_counts(small, small, np.ones_like(small, dtype=bool))[1] == 400 - 16


def test_foreign_metrics_through_the_scene_predictor(tmp_path) -> None:
    """A spectral model fitted on other patch scenes reads plain patches almost perfectly, and
    worse once the noise grows: the metrics work and can fail."""
    fit = make_patch_scene(100, 256)
    labels = (fit.lc - 1)[None]
    model = fit_pixel_baseline(fit.image[None], labels, num_classes=7, ignore_index=6, max_pixels=20_000)
    scenes = write_family_scenes(str(tmp_path / "plain"), ForeignFamily("plain", sizes=(136, 200)), seed=7)
    result = evaluate_foreign(model, scenes, ignore_index=6, chip_size=64, overlap=16)
    assert result["pixels"] == 136**2 + 200**2
    assert result["pixel_accuracy"] > 0.9 and result["patch_majority_share"] > 0.9
    noisy = ForeignFamily("noisy", noise_std=30.0, sizes=(136,))
    worse = evaluate_foreign(model, write_family_scenes(str(tmp_path / "n"), noisy, seed=7), ignore_index=6)
    assert worse["pixel_accuracy"] < result["pixel_accuracy"] - 0.05


def test_families_report_the_worst_not_the_mean(tmp_path, monkeypatch) -> None:
    fit = make_patch_scene(100, 256)
    model = fit_pixel_baseline(
        fit.image[None], (fit.lc - 1)[None], num_classes=7, ignore_index=6, max_pixels=20_000
    )
    small = (ForeignFamily("plain", sizes=(96,)), ForeignFamily("very_noisy", noise_std=30.0, sizes=(96,)))
    monkeypatch.setattr("training.data.foreign.FOREIGN_FAMILIES", small)
    result = evaluate_foreign_families(model, str(tmp_path), seed=3, ignore_index=6, chip_size=64, overlap=16)
    assert set(result["families"]) == {"plain", "very_noisy"}
    assert result["worst_family"] == "very_noisy"
    assert result["pixel_accuracy"] == result["families"]["very_noisy"]["pixel_accuracy"]
    assert result["pixel_accuracy"] < result["families"]["plain"]["pixel_accuracy"]

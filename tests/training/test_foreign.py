"""The foreign scene family: square patches of plain class spectra, other sizes, another CRS."""

from __future__ import annotations

import numpy as np

from core.naip import open_naip
from training.baselines import fit_pixel_baseline
from training.data.chesapeake import read_label
from training.data.foreign import FOREIGN_CRS, make_patch_scene, write_patch_scenes
from training.evaluation import evaluate_foreign


def test_patch_scenes_are_deterministic_georeferenced_and_another_family(tmp_path) -> None:
    a, b = make_patch_scene(3, 200), make_patch_scene(3, 200)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lc, b.lc)
    assert set(np.unique(a.lc)) <= {1, 2, 3, 4, 5, 6} and len(np.unique(a.lc)) >= 4
    (record,) = write_patch_scenes(str(tmp_path), seed=5, sizes=(136,))
    with open_naip(record.image_uri) as scene:
        assert scene.shape == (136, 136) and scene.crs.to_string() == FOREIGN_CRS
    assert read_label(record.label_uri).max() <= 5  # model ids 0..5


def test_foreign_pixel_accuracy_through_the_scene_predictor(tmp_path) -> None:
    """A spectral model fitted on other patch scenes reads these almost perfectly: the metric works."""
    fit = make_patch_scene(100, 256)
    labels = (fit.lc - 1)[None]
    model = fit_pixel_baseline(fit.image[None], labels, num_classes=7, ignore_index=6, max_pixels=20_000)
    scenes = write_patch_scenes(str(tmp_path), seed=7, sizes=(136, 200))
    result = evaluate_foreign(model, scenes, ignore_index=6, chip_size=64, overlap=16)
    assert result["pixels"] == 136**2 + 200**2
    assert result["pixel_accuracy"] > 0.9

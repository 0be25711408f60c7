"""The drift reference measures drift: a model version's own held-out predictions are what the
monitor compares new predictions with, so in-distribution imagery stays quiet and shifted imagery
fires, with the band PSI naming the band that moved.

The "model" here is the per-pixel spectral baseline (fitted in a second), run through the real
scene predictor and evaluation; the monitor does not care what made the predictions.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.monitor import SceneSummary, run_metrics
from inference.predict import predict_array
from inference.settings import ChainDefaults
from training.baselines import fit_pixel_baseline
from training.data.chesapeake import find_scenes
from training.data.chips import read_scene_chips
from training.data.stats import compute_stats
from training.data.synthetic import generate_dataset, generate_scene
from training.evaluation import evaluate_served

SIZE = 1024
DEFAULT_DRIFT_THRESHOLD = ChainDefaults().drift_threshold


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("drift") / "data")
    generate_dataset(root, scenes_per_split=2, size=SIZE, seed=21, splits=("train", "test"), workers=1)
    train, test = find_scenes(root, "train"), find_scenes(root, "test")
    chips = [read_scene_chips(s, size=256, random_count=None, seed=0) for s in train]
    model = fit_pixel_baseline(
        np.concatenate([c.images for c in chips]),
        np.concatenate([c.labels for c in chips]),
        num_classes=7,
        ignore_index=6,
        max_pixels=100_000,
    )
    stats = compute_stats(train).to_dict()
    report = evaluate_served(
        {"served": model}, test, stats["class_fractions"], ignore_index=6, served="served"
    )
    return model, {**stats, "predictions": report.metrics["prediction_reference"]}


def _run(model, images: list[np.ndarray], reference_stats: dict) -> tuple[dict, bool]:
    summaries = [SceneSummary.from_prediction(predict_array(model, image)) for image in images]
    rows, flag = run_metrics(summaries, reference_stats)
    return {(name, key): value for name, key, value in rows}, flag


def test_reference_holds_the_models_own_predictions(reference) -> None:
    _, ref = reference
    predicted = ref["predictions"]
    assert predicted["pixels"] > 0 and 0 < predicted["mean_max_softmax"] <= 1
    assert sum(predicted["class_fractions"]) == pytest.approx(1.0)
    assert predicted["class_fractions"] != ref["class_fractions"]  # predictions, not labels


def test_in_distribution_run_does_not_fire(reference) -> None:
    model, ref = reference
    images = [generate_scene(seed, SIZE)[0] for seed in (901, 902, 903)]  # new seeds, same generator
    rows, flag = _run(model, images, ref)
    assert not flag, {k: v for k, v in rows.items() if k[0].startswith("psi")}
    assert rows[("psi_class", "")] < DEFAULT_DRIFT_THRESHOLD


@pytest.mark.parametrize(("band", "index", "offset"), [("nir", 3, 45), ("red", 0, -35)])
def test_shifted_band_fires_and_is_named(reference, band: str, index: int, offset: int) -> None:
    model, ref = reference
    images = []
    for seed in (901, 902, 903):
        image = generate_scene(seed, SIZE)[0].astype(np.int16)
        valid = image.any(axis=0)
        image[index][valid] = np.clip(image[index][valid] + offset, 1, 255)
        images.append(image.astype(np.uint8))
    rows, flag = _run(model, images, ref)
    assert flag
    band_psi = {key: value for (name, key), value in rows.items() if name == "psi_band"}
    assert max(band_psi, key=band_psi.get) == band
    assert band_psi[band] > DEFAULT_DRIFT_THRESHOLD
    assert all(v < DEFAULT_DRIFT_THRESHOLD for k, v in band_psi.items() if k != band)

"""Served-path evaluation: metrics equal torchmetrics' checked ones, the served backend's
throughput is recorded, and out-of-range class ids are refused.

The "model" is the per-pixel spectral baseline (fitted in a second) run through the real scene
predictor; evaluate_served does not care what made the predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.classes import CLASS_NAMES
from inference.runtime import default_num_threads
from inference.runtime_cpu import detect_cpu
from training.baselines import fit_pixel_baseline
from training.data.chesapeake import find_scenes, read_label
from training.data.chips import read_scene_chips
from training.data.stats import compute_stats
from training.data.synthetic import generate_dataset
from training.evaluation import evaluate_served
from training.module import build_metrics, metrics_to_dict

SIZE = 512
CHIP = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evaluation") / "data")
    generate_dataset(root, scenes_per_split=1, size=SIZE, seed=5, splits=("train", "test"), workers=1)
    train, test = find_scenes(root, "train"), find_scenes(root, "test")
    chips = read_scene_chips(train[0], size=256, random_count=None, seed=0)
    model = fit_pixel_baseline(chips.images, chips.labels, num_classes=7, ignore_index=6, max_pixels=50_000)
    return model, test, compute_stats(train).to_dict()["class_fractions"]


class _Slow:
    """The baseline as a predictor that reports its threads (like the torch runtime)."""

    backend = "slow-baseline"

    def __init__(self, model, num_threads: int) -> None:
        self.model, self.num_threads, self.num_classes = model, num_threads, model.num_classes
        self.metadata = model.metadata

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(chips)


def test_served_metrics_and_throughput(setup) -> None:
    model, test, fractions = setup
    report = evaluate_served(
        {"served": model, "ref": _Slow(model, 3)},
        test,
        fractions,
        pixel_baseline=model,
        ignore_index=6,
        served="served",
        reference="ref",
        chip_size=CHIP,
        overlap=16,
    )
    metrics = report.metrics
    # Unchecked metrics equal torchmetrics' checked ones on the same pixels.
    pred = model.predict(_image(test[0].image_uri))
    truth = read_label(test[0].label_uri)
    checked = build_metrics(7, 6)
    checked.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    expected = metrics_to_dict(checked.compute(), CLASS_NAMES[:7], 6)
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=0.01)  # blended vs per-pixel
    assert metrics["pixel_baseline"]["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert metrics["served_vs_reference_agreement"] == 1.0

    throughput = metrics["throughput"]
    chips = metrics["backends"]["served"]["chips"]
    assert chips == throughput["chips"] > 0
    # "seconds" is rounded to the millisecond; seconds_per_chip is not.
    assert throughput["seconds_per_chip"] == pytest.approx(throughput["seconds"] / chips, abs=0.0005 / chips)
    assert throughput["seconds_per_chip"] > 0
    assert throughput["chip_size"] == CHIP
    assert throughput["threads"] == default_num_threads()  # the baseline names no threads
    assert throughput["cpu"] == detect_cpu().model and throughput["cpu"]
    assert throughput["backend"] == "pixel-baseline"

    # The threads come from the served predictor when it names them.
    swapped = evaluate_served(
        {"served": _Slow(model, 3)}, test, fractions, served="served", chip_size=CHIP, overlap=16
    )
    assert swapped.metrics["throughput"]["threads"] == 3
    assert swapped.metrics["throughput"]["backend"] == "slow-baseline"


class _BadBaseline:
    """A spectral baseline whose ids fall outside the model's classes."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        return np.full(image.shape[1:], 9, dtype=np.uint8)


def test_out_of_range_class_ids_are_refused(setup) -> None:
    model, test, fractions = setup
    with pytest.raises(ValueError, match="class id 9"):
        evaluate_served(
            {"served": model}, test, fractions, pixel_baseline=_BadBaseline(), served="served", chip_size=CHIP
        )


def _image(uri: str) -> np.ndarray:
    from core.naip import open_naip

    with open_naip(uri) as src:
        return src.read()


@pytest.mark.parametrize("case", ["mixed", "absent_class", "never_no_data"])
def test_metrics_from_confusion_equal_torchmetrics(case: str) -> None:
    from training.module import confusion_counts, metrics_from_confusion

    rng = np.random.default_rng(len(case))
    target = rng.integers(0, 7, 20_000)
    pred = np.where(rng.random(target.size) < 0.7, target, rng.integers(0, 7, target.size))
    if case == "absent_class":
        pred[pred == 3], target[target == 3] = 2, 2
    if case == "never_no_data":
        pred[pred == 6] = 0
    checked = build_metrics(7, 6)
    checked.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected = metrics_to_dict(checked.compute(), CLASS_NAMES[:7], 6)
    got = metrics_from_confusion(confusion_counts(pred, target, 7, 6), CLASS_NAMES[:7], 6)
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("miou", "weighted_iou", "f1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)
    for name, value in expected["per_class_iou"].items():
        assert got["per_class_iou"][name] == (None if value is None else pytest.approx(value, abs=1e-6))

"""Monitoring: divergences, re-binning on the reference edges, scene/run rows and drift flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.classes import CLASS_NAMES, NODATA_CLASS_ID
from core.naip import NAIP_BANDS
from inference.monitor import (
    SceneSummary,
    band_histogram,
    drift_rows,
    js_divergence,
    psi,
    reference_class_distribution,
    run_metrics,
    scene_metrics,
)
from inference.predict import predict_array
from inference.settings import DEFAULTS
from observability.panels import METRIC_NAMES
from tests.inference.helpers_core import LocalPredictor
from training.data.stats import StatsAccumulator
from training.data.synthetic import generate_scene

#: Of the names the dashboards read, those only a run (not a scene) has.
RUN_ONLY_NAMES = {
    "reference_class_fraction",
    "scenes_predicted",
    "seconds_total",
    "cost_usd",
    "cost_usd_per_km2",
}
SCENE_NAMES = set(METRIC_NAMES) - RUN_ONLY_NAMES


@pytest.fixture(scope="module")
def reference() -> dict:
    image, lc = generate_scene(11, 256)
    acc = StatsAccumulator()
    from core.classes import remap_lc

    acc.update(image, image.any(axis=0), remap_lc(lc))
    return acc.result().to_dict()


def _summary(image: np.ndarray) -> SceneSummary:
    return SceneSummary.from_prediction(predict_array(LocalPredictor(), image, chip_size=128))


def test_psi_and_js_basics() -> None:
    p = [0.2, 0.3, 0.5]
    assert psi(p, p) == pytest.approx(0.0) and js_divergence(p, p) == pytest.approx(0.0)
    assert psi([1, 0], [0, 1]) > 5 and np.isfinite(psi([1, 0], [0, 1]))
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < js_divergence([0.6, 0.4], [0.4, 0.6]) < 0.05
    # PSI of a known shift: sum((p-q) ln(p/q))
    q = np.array([0.5, 0.5])
    pp = np.array([0.6, 0.4])
    assert psi(pp, q, eps=0) == pytest.approx(float(((pp - q) * np.log(pp / q)).sum()))
    assert psi([20, 30, 50], p) == pytest.approx(0.0)  # counts are normalised
    for bad in ([], [0, 0], [1, -1], [np.nan, 1]):
        with pytest.raises(ValueError):
            psi(bad, [1] * max(1, len(bad)))
    with pytest.raises(ValueError, match="length"):
        js_divergence([1, 2], [1, 2, 3])


def test_band_histogram_uses_reference_edges(reference) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, 10_000)
    counts = np.bincount(values, minlength=256)
    hist = band_histogram(counts, reference["bin_edges"])
    np.testing.assert_array_equal(hist, np.histogram(values, bins=reference["bin_edges"])[0])
    assert hist.sum() == 10_000 and hist.size == len(reference["bin_edges"]) - 1


def test_reference_class_distribution_drops_nodata(reference) -> None:
    ref = reference_class_distribution(reference)
    fractions = np.asarray(reference["class_fractions"])
    assert ref.size == len(CLASS_NAMES) - 1 and ref.sum() == pytest.approx(1.0)
    expected = np.delete(fractions, NODATA_CLASS_ID)
    np.testing.assert_allclose(ref, expected / expected.sum())


def test_scene_metrics_rows(reference) -> None:
    image, _ = generate_scene(11, 256)
    pred = predict_array(LocalPredictor(), image, chip_size=128)
    rows, flag = scene_metrics(pred, reference, threshold=0.2)
    names = {name for name, _, _ in rows}
    assert names >= SCENE_NAMES
    assert all(np.isfinite(v) for _, _, v in rows)
    by = {(n, k): v for n, k, v in rows}
    assert sum(by[("class_fraction", c)] for c in CLASS_NAMES) == pytest.approx(1.0)
    assert sum(by[("class_area_km2", c)] for c in CLASS_NAMES) == pytest.approx(by[("area_km2", "")])
    assert by[("area_km2", "")] == pytest.approx(image.any(axis=0).sum() / 1e6)
    valid = image.any(axis=0)
    for b, name in enumerate(NAIP_BANDS):
        assert by[("band_mean", name)] == pytest.approx(image[b][valid].mean())
        assert by[("band_std", name)] == pytest.approx(image[b][valid].std())
    # Same imagery as the reference: the bands do not drift.
    assert all(by[("psi_band", name)] < 1e-6 for name in NAIP_BANDS)
    assert 0 <= by[("js_class", "")] <= 1
    assert by[("drift_flag", "")] == float(flag)
    assert 0 < by[("mean_max_softmax", "")] <= 1 and 0 <= by[("entropy", "")] <= 1


def test_drift_flagged_for_shifted_imagery(reference) -> None:
    image, _ = generate_scene(11, 256)
    darker = (image // 2).astype(np.uint8)
    darker[:, ~image.any(axis=0)] = 0
    summary = _summary(darker)
    rows, flag = drift_rows(summary.class_counts, summary.band_counts, reference, threshold=0.2)
    by = {(n, k): v for n, k, v in rows}
    assert flag and by[("drift_flag", "")] == 1.0
    assert all(by[("psi_band", name)] > 0.2 for name in NAIP_BANDS)
    # a huge threshold turns the flag off
    assert drift_rows(summary.class_counts, summary.band_counts, reference, threshold=1e9)[1] is False


def test_no_reference_means_no_drift_rows() -> None:
    image, _ = generate_scene(12, 128)
    rows, flag = scene_metrics(_summary(image), None)
    assert not flag and not {"psi_class", "drift_flag"} & {n for n, _, _ in rows}


def test_run_metrics_merge_scenes_exactly(reference) -> None:
    a_img, _ = generate_scene(11, 256)
    b_img, _ = generate_scene(13, 128)
    a, b = _summary(a_img), _summary(b_img)
    restored = SceneSummary.from_dict(json.loads(json.dumps(b.to_dict())))
    cost = DEFAULTS.lambda_cost_usd(12.0, 4096, invocations=2)
    rows, flag = run_metrics([a, restored], reference, seconds_total=12.0, cost_usd=cost)
    by = {(n, k): v for n, k, v in rows}
    assert by[("scenes_predicted", "")] == 2 and by[("seconds_total", "")] == 12.0
    assert by[("area_km2", "")] == pytest.approx(a.area_km2 + b.area_km2)
    counts = a.class_counts + b.class_counts
    assert by[("class_fraction", "Water")] == pytest.approx(counts[0] / counts.sum())
    low = (a.low_confidence_count + b.low_confidence_count) / counts.sum()
    assert by[("low_confidence_share", "")] == pytest.approx(low)
    assert by[("cost_usd", "")] == pytest.approx(cost)
    assert by[("cost_usd_per_km2", "")] == pytest.approx(cost / (a.area_km2 + b.area_km2))
    assert {n for n, _, _ in rows} >= set(METRIC_NAMES)  # every name a panel reads
    assert by[("drift_flag", "")] == float(flag)
    empty_rows, empty_flag = run_metrics([], reference, seconds_total=0.0)
    assert ("scenes_predicted", "", 0.0) in empty_rows and not empty_flag

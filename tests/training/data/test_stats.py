"""Dataset statistics on known arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data.builders import write_scene_pair
from training.data.chesapeake import find_scenes
from training.data.stats import DatasetStats, StatsAccumulator, compute_stats


def test_known_array():
    image = np.zeros((4, 2, 4), dtype=np.uint8)
    image[0] = [[0, 10, 20, 30], [40, 50, 60, 255]]
    image[1:] = 100
    valid = np.ones((2, 4), dtype=bool)
    valid[1, 3] = False  # the 255 is excluded
    labels = np.array([[0, 0, 1, 6], [2, 2, 2, 2]], dtype=np.uint8)
    acc = StatsAccumulator(bins=32)
    acc.update(image, valid, labels)
    stats = acc.result()

    red = stats.band("red")
    values = np.array([0, 10, 20, 30, 40, 50, 60])
    assert red.count == 7
    assert red.mean == pytest.approx(values.mean())
    assert red.std == pytest.approx(values.std())
    assert (red.min, red.max) == (0, 60)
    for q in (2, 50, 98):
        assert red.percentiles[f"p{q}"] == np.percentile(values, q, method="inverted_cdf")
    assert len(stats.bin_edges) == 33 and stats.bin_edges[0] == 0 and stats.bin_edges[-1] == 256
    assert sum(red.histogram) == pytest.approx(1.0)
    # 0 -> bin 0; 10 -> bin 1; 20 -> bin 2; 30 -> bin 3; 40, 50 -> bins 5, 6; 60 -> bin 7 (8-wide bins)
    assert np.flatnonzero(red.histogram).tolist() == [0, 1, 2, 3, 5, 6, 7]
    green = stats.band("green")
    assert green.std == 0 and green.percentiles["p50"] == 100 and green.histogram[12] == 1.0

    assert stats.class_counts == [2, 1, 4, 0, 0, 0, 1]
    assert stats.class_fractions[2] == pytest.approx(0.5)
    assert stats.class_names[6] == "No Data"


def test_streaming_equals_one_shot_and_serialises():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 4, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 7, size=(6, 16, 16), dtype=np.uint8)
    batch = StatsAccumulator()
    batch.update(images, images.any(axis=1), labels)  # the whole batch in one update
    one = batch.result()
    acc = StatsAccumulator()
    for img, lab in zip(images, labels, strict=True):
        acc.update(img, img.any(axis=0), lab)
    streamed = acc.result()
    assert streamed.to_dict() == one.to_dict()
    flat = images.transpose(1, 0, 2, 3).reshape(4, -1)
    keep = images.any(axis=1).ravel()
    assert one.band("nir").mean == pytest.approx(flat[3][keep].mean())
    back = DatasetStats.from_dict(json.loads(one.to_json()))
    assert back == one


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="divide 256"):
        StatsAccumulator(bins=30)
    with pytest.raises(ValueError, match="uint8"):
        StatsAccumulator().update(np.zeros((4, 2, 2), dtype=np.float32))


def test_compute_stats_over_scenes(tmp_path):
    write_scene_pair(tmp_path / "train", "a", size=96, seed=1)
    write_scene_pair(tmp_path / "train", "b", size=96, seed=2)
    stats = compute_stats(find_scenes(str(tmp_path), "train"), block=64)
    assert stats.n_scenes == 2
    assert sum(stats.class_counts) == 2 * 96 * 96
    nir, red = stats.band("nir"), stats.band("red")
    assert 0 < nir.count <= 2 * 96 * 96
    assert nir.mean > red.mean  # vegetated scenes are bright in NIR
    stats.save(str(tmp_path / "stats.json"))
    assert DatasetStats.load(str(tmp_path / "stats.json")) == stats

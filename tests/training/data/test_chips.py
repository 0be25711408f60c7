"""Chip windows and reading, with nodata filtering."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.builders import naip_array, write_lc, write_naip
from training.data.chesapeake import SceneRecord
from training.data.chips import (
    ChipWindow,
    filter_windows,
    grid_windows,
    nodata_fractions,
    random_windows,
    read_chips,
    read_scene_chips,
)


def test_grid_covers_scene_and_respects_stride():
    wins = grid_windows(300, 520, size=256)
    assert {(w.row, w.col) for w in wins} == {(0, 0), (0, 256), (0, 264), (44, 0), (44, 256), (44, 264)}
    assert len(grid_windows(512, 512, size=256, overlap=128)) == 9
    assert len(grid_windows(512, 512, size=256, stride=256)) == 4
    assert grid_windows(100, 100, size=256) == []
    with pytest.raises(ValueError, match="stride"):
        grid_windows(512, 512, size=256, overlap=256)
    w = ChipWindow(10, 20, 64).window
    assert (w.row_off, w.col_off, w.width, w.height) == (10, 20, 64, 64)


def test_random_windows_are_seeded_and_inside():
    a = random_windows(500, 400, 20, size=128, seed=5)
    assert a == random_windows(500, 400, 20, size=128, seed=5)
    assert a != random_windows(500, 400, 20, size=128, seed=6)
    assert all(0 <= w.row <= 500 - 128 and 0 <= w.col <= 400 - 128 for w in a)


def test_nodata_fraction_is_exact():
    invalid = np.zeros((8, 8), dtype=bool)
    invalid[:4, :] = True  # top half nodata
    wins = [ChipWindow(0, 0, 4), ChipWindow(2, 0, 4), ChipWindow(4, 4, 4)]
    np.testing.assert_allclose(nodata_fractions(invalid, wins), [1.0, 0.5, 0.0])
    assert filter_windows(wins, invalid, 0.5) == wins[1:]
    assert filter_windows(wins, invalid, 0.49) == wins[2:]


def test_read_chips_skips_nodata_chips(tmp_path):
    image = naip_array(128, seed=1)
    image[:, :64, :] = 0  # top half is nodata
    lc = np.full((128, 128), 3, dtype=np.uint8)
    lc[100:, 100:] = 15  # a label no-data corner also counts
    img = write_naip(tmp_path / "s_naip-new.tif", image=image)
    lab = write_lc(tmp_path / "s_lc.tif", lc)
    batch = read_chips(str(img), str(lab), size=32)
    kept = {(w.row, w.col) for w in batch.windows}
    assert all(r >= 64 for r, _ in kept)
    assert (96, 96) not in kept and (64, 96) in kept  # chip (96, 96) is 77% label no-data
    assert batch.images.shape == (len(kept), 4, 32, 32) and batch.images.dtype == np.uint8
    assert batch.labels is not None and batch.labels.shape == (len(kept), 32, 32)
    first = batch.windows[0]
    np.testing.assert_array_equal(
        batch.images[0], image[:, first.row : first.row + 32, first.col : first.col + 32]
    )
    assert set(np.unique(batch.labels)) <= {2, 6}

    everything = read_chips(str(img), None, size=32, max_nodata_fraction=1.0)
    assert len(everything) == 16 and everything.labels is None

    rnd = read_scene_chips(SceneRecord("s", str(img), str(lab), "train"), random_count=10, size=32, seed=1)
    assert 0 < len(rnd) <= 10


def test_label_shape_mismatch(tmp_path):
    img = write_naip(tmp_path / "a_naip-new.tif", size=64)
    lab = write_lc(tmp_path / "a_lc.tif", np.full((32, 32), 3, dtype=np.uint8))
    with pytest.raises(ValueError, match="pixel-aligned"):
        read_chips(str(img), str(lab), size=32)

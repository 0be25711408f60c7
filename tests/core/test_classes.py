"""The class table and the lc remap."""

from __future__ import annotations

import numpy as np
import pytest

from core.classes import (
    CLASSES,
    COLORMAP,
    NODATA_CLASS_ID,
    NUM_CLASSES,
    UnknownLabelValueError,
    class_table,
    remap_lc,
)


def test_table_is_consistent():
    assert NUM_CLASSES == 7
    assert [c.id for c in CLASSES] == list(range(7))
    assert [c.source_value for c in CLASSES] == [1, 2, 3, 4, 5, 6, 15]
    assert CLASSES[NODATA_CLASS_ID].name == "No Data"
    assert set(COLORMAP) == set(range(7))
    assert all(len(rgba) == 4 and rgba[3] == 255 for rgba in COLORMAP.values())


def test_remap_maps_every_source_value_including_nodata():
    raw = np.array([[1, 2, 3, 4], [5, 6, 15, 1]], dtype=np.uint8)
    out = remap_lc(raw)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [4, 5, 6, 0]])


def test_remap_maps_zero_to_nodata():
    """The real release marks unlabelled pixels 0 as well as 15: both are No Data (id 6)."""
    raw = np.array([[0, 1], [15, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(remap_lc(raw), [[6, 0], [6, 6]])


@pytest.mark.parametrize("bad", [7, 14, 255])
def test_remap_rejects_unknown_values(bad):
    raw = np.array([[1, bad]], dtype=np.uint8)
    with pytest.raises(UnknownLabelValueError, match=str(bad)):
        remap_lc(raw)


def test_remap_rejects_out_of_range_and_float():
    with pytest.raises(UnknownLabelValueError):
        remap_lc(np.array([1, 300], dtype=np.int32))
    with pytest.raises(UnknownLabelValueError, match="integers"):
        remap_lc(np.array([1.0, 2.0]))


def test_class_table_is_json_ready():
    table = class_table()
    assert [row["id"] for row in table] == list(range(7))
    assert table[0] == {"id": 0, "name": "Water", "color": "#0070ff", "rgb": [0, 112, 255], "source_value": 1}
    assert table[6]["source_value"] == 15

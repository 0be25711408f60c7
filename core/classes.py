"""The Chesapeake 7-class table, defined once and used by training, inference and reports.

The CVPR 2019 Chesapeake ``lc`` rasters store raw values 1..6 and 15 (no data). The model
predicts ids 0..6 in the same order, with 15 mapped to 6 ("No Data"). Every raster and API
response that carries class ids also carries :func:`class_table`, so nobody has to guess
which numbering a file uses (the seed deployment mixed the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LandCoverClass:
    """One land-cover class.

    Args:
        id: model class id (0..6), the value written in prediction rasters.
        name: human-readable name.
        color: RGB display colour (0..255 each).
        source_value: the raw value of this class in the Chesapeake ``lc`` rasters.
    """

    id: int
    name: str
    color: tuple[int, int, int]
    source_value: int


# Colours follow the Chesapeake Conservancy land-cover palette, so maps look familiar.
CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(0, "Water", (0, 112, 255), 1),
    LandCoverClass(1, "Tree Canopy", (38, 115, 0), 2),
    LandCoverClass(2, "Low Vegetation", (163, 255, 115), 3),
    LandCoverClass(3, "Barren", (255, 170, 0), 4),
    LandCoverClass(4, "Impervious (other)", (156, 156, 156), 5),
    LandCoverClass(5, "Impervious (road)", (0, 0, 0), 6),
    LandCoverClass(6, "No Data", (255, 255, 255), 15),
)

NUM_CLASSES: int = len(CLASSES)
NODATA_CLASS_ID: int = 6
#: Raw ``lc`` value for "no data" in the Chesapeake release.
NODATA_SOURCE_VALUE: int = 15
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
#: Model class id -> RGBA, the form GDAL colormaps (``write_colormap``) expect.
COLORMAP: dict[int, tuple[int, int, int, int]] = {c.id: (*c.color, 255) for c in CLASSES}
#: Raw ``lc`` value -> RGBA, for colouring label rasters that keep the source values.
SOURCE_COLORMAP: dict[int, tuple[int, int, int, int]] = {c.source_value: (*c.color, 255) for c in CLASSES}
#: Raw ``lc`` values the release uses for unlabelled pixels besides 15: 0 (tile edges and
#: gaps in the real CVPR 2019 rasters). They map to No Data like 15 and never refuse a tile.
EXTRA_NODATA_SOURCE_VALUES: tuple[int, ...] = (0,)
#: Raw ``lc`` value -> model class id.
SOURCE_TO_ID: dict[int, int] = {c.source_value: c.id for c in CLASSES}

_UNMAPPED = 255
_LUT = np.full(256, _UNMAPPED, dtype=np.uint8)
for _cls in CLASSES:
    _LUT[_cls.source_value] = _cls.id
for _value in EXTRA_NODATA_SOURCE_VALUES:
    _LUT[_value] = NODATA_CLASS_ID


class UnknownLabelValueError(ValueError):
    """A label raster holds a value that is not in the Chesapeake ``lc`` table."""


def remap_lc(labels: np.ndarray) -> np.ndarray:
    """Map raw Chesapeake ``lc`` values (1..6, 15; 0 is No Data too) to model ids 0..6 as uint8.

    Raises:
        UnknownLabelValueError: if any value is outside the table; silently mapping it would
            teach the model a wrong class.
    """
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise UnknownLabelValueError(f"label raster must hold integers, found dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        bad = np.unique(arr[(arr < 0) | (arr > 255)])[:10].tolist()
        raise UnknownLabelValueError(_unknown_message(bad))
    out = _LUT[arr.astype(np.uint8, copy=False)]
    if (out == _UNMAPPED).any():
        bad = np.unique(arr[out == _UNMAPPED])[:10].tolist()
        raise UnknownLabelValueError(_unknown_message(bad))
    return out


def _unknown_message(bad: list[int]) -> str:
    known = sorted([*SOURCE_TO_ID, *EXTRA_NODATA_SOURCE_VALUES])
    return (
        f"label raster holds values {bad} that are not Chesapeake lc classes; expected only {known} "
        "(1 water, 2 tree canopy, 3 low vegetation, 4 barren, 5 impervious, 6 road, 0 and 15 no data)"
    )


def class_table() -> list[dict]:
    """The class table as plain dicts (``id``, ``name``, ``color`` as ``#rrggbb``, ``rgb``,
    ``source_value``) for API responses, STAC items and raster metadata."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "color": "#{:02x}{:02x}{:02x}".format(*c.color),
            "rgb": list(c.color),
            "source_value": c.source_value,
        }
        for c in CLASSES
    ]


def colorize(ids: np.ndarray) -> np.ndarray:
    """Class ids 0..6 ``(H, W)`` -> RGB uint8 ``(H, W, 3)`` from the class table."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for c in CLASSES:
        palette[c.id] = c.color
    return palette[ids]

"""Chip sampling: grid and seeded random windows over a scene, skipping mostly-nodata chips.

Windows are :class:`ChipWindow` records (row, col, size), convertible to rasterio Windows.
The nodata fraction of every candidate comes from one read of the scene's mask and a summed-area
table, so filtering thousands of windows costs one mask read, not thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from training.data.chesapeake import SceneRecord, read_label
from core.classes import NODATA_CLASS_ID
from core.limits import DEFAULT_MAX_PIXELS
from core.naip import open_naip

DEFAULT_CHIP_SIZE = 256
DEFAULT_MAX_NODATA_FRACTION = 0.5


@dataclass(frozen=True)
class ChipWindow:
    """A square chip: top-left ``row``/``col`` and ``size`` in pixels."""

    row: int
    col: int
    size: int

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.size, self.size)

    def to_dict(self) -> dict[str, int]:
        return {"row": self.row, "col": self.col, "size": self.size}


@dataclass
class ChipBatch:
    """Chips of one scene: images uint8 ``(N, 4, S, S)``, labels uint8 ``(N, S, S)`` (ids 0..6)
    or None when no label was read, and the windows they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    windows: list[ChipWindow]

    def __len__(self) -> int:
        return len(self.windows)


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    # A last chip flush with the edge, so the grid covers the whole scene.
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def grid_windows(
    height: int, width: int, size: int = DEFAULT_CHIP_SIZE, stride: int | None = None, overlap: int = 0
) -> list[ChipWindow]:
    """Windows on a regular grid covering the scene, row-major.

    ``stride`` defaults to ``size - overlap``. The last row/column is shifted to end at the
    edge rather than running past it. A scene smaller than ``size`` yields no windows.
    """
    if size <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    step = stride if stride is not None else size - overlap
    if step <= 0:
        raise ValueError(f"stride must be positive (size={size}, overlap={overlap}, stride={stride})")
    return [ChipWindow(r, c, size) for r in _starts(height, size, step) for c in _starts(width, size, step)]


def random_windows(
    height: int, width: int, count: int, size: int = DEFAULT_CHIP_SIZE, seed: int = 0
) -> list[ChipWindow]:
    """``count`` windows at uniformly random positions, reproducible by ``seed``."""
    if height < size or width < size:
        return []
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, height - size + 1, size=count)
    cols = rng.integers(0, width - size + 1, size=count)
    return [ChipWindow(int(r), int(c), size) for r, c in zip(rows, cols, strict=True)]


def nodata_fractions(invalid: np.ndarray, windows: Sequence[ChipWindow]) -> np.ndarray:
    """Fraction of ``invalid`` (bool ``(H, W)``, True = nodata) pixels inside each window."""
    if not windows:
        return np.zeros(0, dtype=np.float64)
    sat = np.zeros((invalid.shape[0] + 1, invalid.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(invalid, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    r0 = np.array([w.row for w in windows])
    c0 = np.array([w.col for w in windows])
    s = np.array([w.size for w in windows])
    r1, c1 = r0 + s, c0 + s
    total = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return total / (s * s).astype(np.float64)


def filter_windows(
    windows: Sequence[ChipWindow],
    invalid: np.ndarray,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA_FRACTION,
) -> list[ChipWindow]:
    """Keep the windows whose nodata fraction is at most ``max_nodata_fraction``."""
    fractions = nodata_fractions(invalid, windows)
    return [w for w, f in zip(windows, fractions, strict=True) if f <= max_nodata_fraction]


def read_chips(
    image_uri: str,
    label_uri: str | None = None,
    windows: Sequence[ChipWindow] | None = None,
    *,
    size: int = DEFAULT_CHIP_SIZE,
    stride: int | None = None,
    overlap: int = 0,
    random_count: int | None = None,
    seed: int = 0,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA_FRACTION,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ChipBatch:
    """Read the chips of one scene into numpy arrays.

    Windows are ``windows`` when given, else ``random_count`` seeded random windows, else a
    grid (``size``, ``stride``/``overlap``). A pixel counts as nodata when the image mask says so
    or, with a label, when the label is "No Data"; chips above ``max_nodata_fraction`` are skipped.

    Raises:
        NaipValidationError: the image is not a usable NAIP scene.
        ValueError: the label raster does not have the image's shape.
    """
    with open_naip(image_uri, max_pixels=max_pixels) as scene:
        height, width = scene.shape
        if windows is None:
            if random_count is not None:
                windows = random_windows(height, width, random_count, size=size, seed=seed)
            else:
                windows = grid_windows(height, width, size=size, stride=stride, overlap=overlap)
        invalid = ~scene.valid_mask()
        labels_full = None
        if label_uri is not None:
            labels_full = read_label(label_uri)
            if labels_full.shape != (height, width):
                raise ValueError(
                    f"label {label_uri} is {labels_full.shape[1]}x{labels_full.shape[0]} but image "
                    f"{image_uri} is {width}x{height}; they must be pixel-aligned"
                )
            invalid |= labels_full == NODATA_CLASS_ID
        if len({w.size for w in windows}) > 1:
            raise ValueError("all windows of one read_chips call must have the same size")
        kept = filter_windows(windows, invalid, max_nodata_fraction)
        n = len(kept)
        chip = kept[0].size if kept else size
        images = np.empty((n, 4, chip, chip), dtype=np.uint8)
        labels = np.empty((n, chip, chip), dtype=np.uint8) if labels_full is not None else None
        for i, w in enumerate(kept):
            images[i] = scene.read(window=w.window)
            if labels is not None and labels_full is not None:
                labels[i] = labels_full[w.row : w.row + w.size, w.col : w.col + w.size]
    return ChipBatch(images, labels, list(kept))


def read_scene_chips(scene: SceneRecord, **kwargs: object) -> ChipBatch:
    """:func:`read_chips` for a :class:`SceneRecord` (image + label)."""
    return read_chips(scene.image_uri, scene.label_uri, **kwargs)  # type: ignore[arg-type]

"""A scene family the synthetic generator does not make: square patches of plain class spectra.

Robustness check, not training data. Each scene is a grid of axis-aligned squares of random
sizes, each filled with one class's mean NAIP spectrum (the same per-class means the generator
uses, so the classes mean the same thing) plus independent per-pixel sensor noise: no texture,
no shadows, no roads or buildings as shapes, no blur at edges. Scenes come at other sizes than
the training scenes and in another CRS (NAD83 / Conus Albers, EPSG:5070, instead of UTM), written
as real GeoTIFFs through the same writer, so the whole read/predict path is exercised.

Nothing here feeds back into the generator or the model: it is measured, never tuned to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.transform import Affine

from training.data.chesapeake import SceneRecord
from training.data.synthetic import SPECTRA, SyntheticScene, write_scene

__all__ = ["FOREIGN_CRS", "FOREIGN_SIZES", "make_patch_scene", "write_patch_scenes"]

FOREIGN_CRS = "EPSG:5070"
#: Scene sides (px) of the family: none of them is the generator's 2048.
FOREIGN_SIZES: tuple[int, ...] = (600, 904)
#: Per-pixel sensor noise (std of digital numbers).
NOISE_STD = 6.0


def make_patch_scene(
    seed: int, size: int, min_patch: int = 12, max_patch: int = 96, noise_std: float = NOISE_STD
) -> SyntheticScene:
    """One scene of square class patches (raw lc values 1..6) with plain spectra plus noise."""
    rng = np.random.default_rng(seed)
    classes = sorted(SPECTRA)
    lc = np.full((size, size), classes[rng.integers(len(classes))], dtype=np.uint8)
    covered = 0.0
    while covered < 3.0 * size * size:  # enough squares to cover the scene about three times
        side = int(rng.integers(min_patch, max_patch + 1))
        r, c = (int(v) for v in rng.integers(0, size - side + 1, 2))
        lc[r : r + side, c : c + side] = classes[rng.integers(len(classes))]
        covered += side * side
    spectra = np.zeros((max(classes) + 1, 4), dtype=np.float32)
    for k, value in SPECTRA.items():
        spectra[k] = value
    image = spectra[lc].transpose(2, 0, 1) + rng.normal(0.0, noise_std, (4, size, size)).astype(np.float32)
    image = np.clip(np.rint(image), 1, 255).astype(np.uint8)  # 0 is nodata in NAIP
    x0, y0 = 1_500_000.0 + 10_000.0 * (seed % 17), 1_900_000.0 + 10_000.0 * (seed % 13)
    transform = Affine(1.0, 0.0, x0, 0.0, -1.0, y0)
    return SyntheticScene(image=image, lc=lc, transform=transform, crs=FOREIGN_CRS, seed=seed)


def write_patch_scenes(
    root_uri: str, seed: int = 0, sizes: Sequence[int] = FOREIGN_SIZES, split: str = "test"
) -> list[SceneRecord]:
    """Write one patch scene per size under ``root_uri/<split>/`` (Chesapeake layout)."""
    return [
        write_scene(root_uri, split, f"patches-{seed + i:03d}-{size}", make_patch_scene(seed + i, size))
        for i, size in enumerate(sizes)
    ]

"""Scene families the synthetic generator does not make: square patches of plain class spectra.

Robustness check, not training data. Each scene is a grid of axis-aligned squares of random
sizes, each filled with one class's mean NAIP spectrum plus independent per-pixel sensor noise:
no texture, no shadows, no roads or buildings as shapes, no blur at edges. Scenes come at other
sizes than the training scenes and in other CRSs, written as real GeoTIFFs through the same
writer, so the whole read/predict path is exercised.

A :class:`ForeignFamily` varies one thing at a time from the plain family: the spectral table
(each class's mean moved by a seeded few per cent: another season, another sensor), per-band
gain and offset (calibration), the noise level, the patch sizes and the CRS. The evaluation
reports the worst family, not the mean, and how consistently a uniform patch is labelled.

Nothing here feeds back into the generator or the model: it is measured, never tuned to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine

from training.data.chesapeake import SceneRecord
from training.data.synthetic import SPECTRA, SyntheticScene, write_scene

__all__ = [
    "FOREIGN_FAMILIES",
    "FOREIGN_SIZES",
    "ForeignFamily",
    "families",
    "make_patch_scene",
    "write_family_scenes",
]

#: Scene sides (px) of a family: none of them is the generator's 2048.
FOREIGN_SIZES: tuple[int, ...] = (600, 904)

# Map origins (metres) inside each CRS's area of use, so the scenes are plausible places.
_ORIGINS = {
    "EPSG:5070": (1_500_000.0, 1_900_000.0),  # NAD83 / Conus Albers, over Pennsylvania
    "EPSG:32617": (600_000.0, 4_400_000.0),  # WGS 84 / UTM 17N, West Virginia
    "EPSG:26918": (400_000.0, 4_300_000.0),  # NAD83 / UTM 18N, Maryland
}


@dataclass(frozen=True)
class ForeignFamily:
    """How one family's scenes are drawn (all draws seeded per scene)."""

    name: str
    #: Std of independent per-pixel sensor noise, in digital numbers.
    noise_std: float = 6.0
    #: Each class's mean spectrum scaled per band by U(1 - j, 1 + j) per scene: another table.
    spectra_jitter: float = 0.0
    #: Whole-scene per-band gain U(1 - g, 1 + g) and offset U(-o, o) DN: another calibration.
    band_gain: float = 0.0
    band_offset: float = 0.0
    min_patch: int = 12
    max_patch: int = 96
    crs: str = "EPSG:5070"
    sizes: tuple[int, ...] = FOREIGN_SIZES

    def describe(self) -> str:
        parts = [f"noise {self.noise_std:g} DN", f"patches {self.min_patch}-{self.max_patch} px", self.crs]
        if self.spectra_jitter:
            parts.append(f"class spectra ±{self.spectra_jitter:.0%}")
        if self.band_gain or self.band_offset:
            parts.append(f"band gain ±{self.band_gain:.0%}, offset ±{self.band_offset:g} DN")
        return ", ".join(parts)


#: The families the evaluate step measures: the plain one, then one change at a time.
FOREIGN_FAMILIES: tuple[ForeignFamily, ...] = (
    ForeignFamily("plain"),
    ForeignFamily("noisy", noise_std=12.0),
    ForeignFamily("very_noisy", noise_std=18.0),
    ForeignFamily("other_spectra", spectra_jitter=0.08, noise_std=8.0),
    ForeignFamily("gain_offset", band_gain=0.1, band_offset=10.0),
    ForeignFamily("small_patches", min_patch=4, max_patch=16),
    ForeignFamily("large_patches", min_patch=128, max_patch=320, sizes=(904,)),
    ForeignFamily("utm17", crs="EPSG:32617", sizes=(744,)),
    ForeignFamily("utm18_noisy", crs="EPSG:26918", noise_std=12.0, spectra_jitter=0.05, sizes=(744,)),
)


def make_patch_scene(seed: int, size: int, family: ForeignFamily = FOREIGN_FAMILIES[0]) -> SyntheticScene:
    """One scene of square class patches (raw lc values 1..6) drawn as ``family`` says."""
    rng = np.random.default_rng(seed)
    classes = sorted(SPECTRA)
    lc = np.full((size, size), classes[rng.integers(len(classes))], dtype=np.uint8)
    covered = 0.0
    max_patch = min(family.max_patch, size)
    while covered < 3.0 * size * size:  # enough squares to cover the scene about three times
        side = int(rng.integers(min(family.min_patch, max_patch), max_patch + 1))
        r, c = (int(v) for v in rng.integers(0, size - side + 1, 2))
        lc[r : r + side, c : c + side] = classes[rng.integers(len(classes))]
        covered += side * side
    spectra = np.zeros((max(classes) + 1, 4), dtype=np.float32)
    for k, value in SPECTRA.items():
        jitter = rng.uniform(1 - family.spectra_jitter, 1 + family.spectra_jitter, 4)
        spectra[k] = np.asarray(value) * jitter
    gain = rng.uniform(1 - family.band_gain, 1 + family.band_gain, 4).astype(np.float32)
    offset = rng.uniform(-family.band_offset, family.band_offset, 4).astype(np.float32)
    image = spectra[lc].transpose(2, 0, 1) * gain[:, None, None] + offset[:, None, None]
    image += rng.normal(0.0, family.noise_std, (4, size, size)).astype(np.float32)
    image = np.clip(np.rint(image), 1, 255).astype(np.uint8)  # 0 is nodata in NAIP
    x0, y0 = _ORIGINS[family.crs]
    x0, y0 = x0 + 10_000.0 * (seed % 17), y0 + 10_000.0 * (seed % 13)
    transform = Affine(1.0, 0.0, x0, 0.0, -1.0, y0)
    return SyntheticScene(image=image, lc=lc, transform=transform, crs=family.crs, seed=seed)


def write_family_scenes(
    root_uri: str, family: ForeignFamily = FOREIGN_FAMILIES[0], seed: int = 0, split: str = "test"
) -> list[SceneRecord]:
    """Write one scene per size of ``family`` under ``root_uri/<split>/`` (Chesapeake layout)."""
    return [
        write_scene(
            root_uri,
            split,
            f"{family.name}-{seed + i:03d}-{size}",
            make_patch_scene(seed + i, size, family),
        )
        for i, size in enumerate(family.sizes)
    ]


def families(names: Sequence[str] | None = None) -> tuple[ForeignFamily, ...]:
    """The named families of :data:`FOREIGN_FAMILIES` (all when ``names`` is None)."""
    if names is None:
        return FOREIGN_FAMILIES
    known = {f.name: f for f in FOREIGN_FAMILIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown foreign families {unknown}; known: {sorted(known)}")
    return tuple(known[n] for n in names)

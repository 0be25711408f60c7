"""Procedural NAIP-like scenes with Chesapeake labels, written as real GeoTIFFs.

The real CVPR 2019 release cannot be downloaded here, so this module draws scenes that have
what a land-cover model needs to learn from: per-class NAIP spectra (water dark with low NIR,
vegetation bright in NIR, tree canopy darker and rougher than grass, grey impervious with NIR
close to the visible bands, brownish bright barren), spatial structure (lakes and a river,
forest patches, field parcels, bare-soil fields, a town with a street grid and buildings, curved
country roads), texture, building shadows, blur at class edges (mixed pixels), sensor noise and
a nodata border. Everything is vectorised numpy (no per-pixel Python loops).

The same seed gives byte-identical arrays (checked across BLAS thread counts; floating-point
libraries on another CPU family could in principle shift a threshold pixel).
Scenes are written in the Chesapeake layout, ``<root>/<split>/<scene_id>_naip-new.tif`` with
``<scene_id>_lc.tif`` holding raw ``lc`` values (1..6, 15 = no data), so the loader that reads
the real release reads these too.

CLI: ``python -m training.data.synthetic --root data/synthetic --size 2048 --scenes-per-split 3``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from core import storage
from core.classes import SOURCE_COLORMAP
from core.logs import configure_console
from core.naip import NAIP_BANDS, NAIP_NODATA
from training.data.chesapeake import IMAGE_SUFFIX, LABEL_SUFFIX, SPLITS, SceneRecord

log = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_ROOT = "data/synthetic"
DEFAULT_SIZE = 2048
DEFAULT_SCENES_PER_SPLIT = 3
DEFAULT_CRS = "EPSG:32618"  # UTM zone 18N, where most of the Chesapeake watershed lies
GENERATOR_VERSION = "1"

# Raw Chesapeake lc values (what *_lc.tif stores).
WATER, TREE, LOWVEG, BARREN, IMPERVIOUS, ROAD, NODATA = 1, 2, 3, 4, 5, 6, 15

# Mean NAIP digital numbers per class, (red, green, blue, nir). Roughly what 2013 NAIP shows
# over the Chesapeake: water dark and NIR-absorbing, canopy darker in the visible than grass,
# impervious grey with NIR about equal to the visible bands, bare soil bright and brownish.
SPECTRA: dict[int, tuple[float, float, float, float]] = {
    WATER: (42.0, 58.0, 62.0, 24.0),
    TREE: (58.0, 78.0, 62.0, 150.0),
    LOWVEG: (92.0, 118.0, 84.0, 182.0),
    BARREN: (172.0, 150.0, 122.0, 168.0),
    IMPERVIOUS: (148.0, 148.0, 146.0, 140.0),
    ROAD: (96.0, 100.0, 102.0, 96.0),
}


@dataclass(frozen=True)
class SyntheticScene:
    """A generated scene: image uint8 ``(4, H, W)``, raw lc uint8 ``(H, W)`` and its georeference."""

    image: np.ndarray
    lc: np.ndarray
    transform: Affine
    crs: str
    seed: int


# --- noise helpers ----------------------------------------------------------------------------
# Everything smooth is drawn on a coarse grid and bilinearly upsampled once: per-pixel work stays
# a handful of passes, whatever the feature size.


def _uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (float32); several times cheaper than normals."""
    u = rng.random(shape, dtype=np.float32)
    u -= 0.5
    u *= np.float32(np.sqrt(12.0))
    return u


def _upsample(low: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resample of a 2-D grid to ``(h, w)`` (the grid spans the output)."""
    gh, gw = low.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in - 1) / n_out
        i0 = np.minimum(x.astype(np.intp), n_in - 2)
        return i0, (x - i0).astype(np.float32)

    r0, fr = axis(h, gh)
    c0, fc = axis(w, gw)
    rows = low[r0] + (low[r0 + 1] - low[r0]) * fr[:, None]  # (h, gw)
    diff = np.diff(rows, axis=1)
    out = rows[:, c0]  # (h, w)
    out += diff[:, c0] * fc[None, :]
    return out


def _lowres_noise(rng: np.random.Generator, gh: int, gw: int, sigma: float = 1.5) -> np.ndarray:
    """White noise on a coarse grid, Gaussian-smoothed (sigma in grid cells) by FFT, unit std."""
    pad = int(3 * sigma) + 1  # keeps the FFT's wrap-around out of the used part
    n = rng.standard_normal((gh + 2 * pad, gw + 2 * pad), dtype=np.float32)
    fy = np.fft.fftfreq(n.shape[0])[:, None]
    fx = np.fft.rfftfreq(n.shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)
    field = np.fft.irfft2(np.fft.rfft2(n) * kernel, s=n.shape)[pad : pad + gh, pad : pad + gw]
    field = field.astype(np.float32)
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _fbm(
    rng: np.random.Generator, h: int, w: int, scales: Sequence[float], gains: Sequence[float]
) -> np.ndarray:
    """Fractal noise with features about ``scales`` pixels across, weighted by ``gains``.

    Octaves are summed on the finest octave's coarse grid (spacing scale/3), then upsampled once.
    """
    finest = max(2.0, min(scales) / 3.0)
    gh, gw = int(np.ceil(h / finest)) + 2, int(np.ceil(w / finest)) + 2
    grid = np.zeros((gh, gw), dtype=np.float32)
    for scale, gain in zip(scales, gains, strict=True):
        spacing = max(2.0, scale / 3.0)
        oh, ow = int(np.ceil(h / spacing)) + 2, int(np.ceil(w / spacing)) + 2
        octave = _lowres_noise(rng, oh, ow)
        grid += gain * (octave if (oh, ow) == (gh, gw) else _upsample(octave, gh, gw))
    return _upsample(grid, h, w)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth noise with features about ``scale`` pixels across."""
    return _fbm(rng, h, w, (scale,), (1.0,))


def _fine_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Pixel-scale texture: uniform noise summed over a 3x3 box (grain a few pixels wide)."""
    n = _uniform(rng, (h + 2, w + 2))
    n = n[:-2] + n[1:-1] + n[2:]
    n = n[:, :-2] + n[:, 1:-1] + n[:, 2:]
    n /= np.float32(3.0)
    return n


def _top_fraction(field: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of roughly the ``fraction`` highest values (threshold from a strided sample)."""
    if fraction <= 0:
        return np.zeros(field.shape, dtype=bool)
    threshold = np.quantile(field[::7, ::7], 1.0 - fraction)
    return field > threshold


def _blur3_(img: np.ndarray) -> np.ndarray:
    """[1, 2, 1]^2 / 16 blur over the last two axes, edge-replicated: a sensor PSF that mixes
    the pixels on class boundaries. Works on slices to avoid padded copies."""
    out = img * np.float32(2.0)
    out[..., 1:, :] += img[..., :-1, :]
    out[..., :-1, :] += img[..., 1:, :]
    out[..., 0, :] += img[..., 0, :]
    out[..., -1, :] += img[..., -1, :]
    res = out * np.float32(2.0)
    res[..., 1:] += out[..., :-1]
    res[..., :-1] += out[..., 1:]
    res[..., 0] += out[..., 0]
    res[..., -1] += out[..., -1]
    res *= np.float32(1.0 / 16.0)
    return res


# --- scene composition -------------------------------------------------------------------------


def _curved_band(
    rng: np.random.Generator, h: int, w: int, width: float, amplitude: float, wavelength: float
) -> np.ndarray:
    """A strip ``width`` pixels wide along a random line that meanders sinusoidally.

    The centreline is a function of one axis (columns for flat lines, rows for steep ones), so
    the trigonometry is 1-D and the mask costs a single broadcast comparison.
    """
    steep = rng.random() < 0.5
    n_along, n_across = (h, w) if steep else (w, h)
    t = np.arange(n_along, dtype=np.float64)
    slope = np.tan(rng.uniform(-np.pi / 4, np.pi / 4))
    start = rng.uniform(0.15, 0.85) * n_across - slope * n_along / 2
    phase = rng.uniform(0, 2 * np.pi)
    k = 2 * np.pi / wavelength
    centre = start + slope * t + amplitude * np.sin(k * t + phase)
    # Half-width measured across the axis, widened where the line runs obliquely.
    half = width / 2 * np.sqrt(1.0 + (slope + amplitude * k * np.cos(k * t + phase)) ** 2)
    lo = (centre - half).astype(np.float32)
    hi = (centre + half).astype(np.float32)
    across = np.arange(n_across, dtype=np.float32)[:, None]
    mask = (across >= lo[None, :]) & (across < hi[None, :])  # (n_across, n_along)
    return mask.T if steep else mask


def _parcels(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """Field parcels: a sheared grid of random-sized cells. Returns (parcel id map, count)."""
    shear = rng.uniform(-0.15, 0.15)
    pad = int(np.ceil(abs(shear) * w)) + 1
    row_edges = np.cumsum(rng.uniform(70, 260, size=(h + 2 * pad) // 60 + 4)) - pad - rng.uniform(0, 200)
    col_edges = np.cumsum(rng.uniform(70, 260, size=w // 60 + 4)) - rng.uniform(0, 200)
    # Rows of a sheared grid: index a lookup table by the integer sheared row coordinate.
    sheared = np.arange(h, dtype=np.int32)[:, None] + np.rint(shear * np.arange(w)).astype(np.int32)[None, :]
    lo = int(sheared.min())
    row_lut = np.searchsorted(row_edges, np.arange(lo, int(sheared.max()) + 1)).astype(np.int32)
    r = row_lut[sheared - lo]
    c = np.searchsorted(col_edges, np.arange(w)).astype(np.int32)
    n_cols = len(col_edges) + 1
    r *= n_cols
    r += c[None, :]
    return r, (len(row_edges) + 1) * n_cols


def _town(
    rng: np.random.Generator, lc: np.ndarray, tone: np.ndarray, urban: np.ndarray, water: np.ndarray
) -> np.ndarray:
    """Street grid, houses and large buildings/parking lots inside the ``urban`` zone.
    Paints ``lc``/``tone`` in place and returns the building mask (for shadows)."""
    h, w = lc.shape
    spacing = int(rng.integers(90, 150))
    street = int(rng.integers(5, 9))
    oy, ox = int(rng.integers(0, spacing)), int(rng.integers(0, spacing))
    rows = (np.arange(h) + oy) % spacing < street
    cols = (np.arange(w) + ox) % spacing < street
    buildings = np.zeros((h, w), dtype=bool)

    # Houses: two rows of lots per block, each lot a rectangle with setbacks from the street.
    lot_w = int(rng.integers(24, 40))
    block_starts_y = np.arange(-oy + street, h, spacing)
    block_starts_x = np.arange(-ox + street, w, spacing)
    inner = spacing - street
    half = inner // 2
    for by in block_starts_y:
        for bx in block_starts_x:
            cy, cx = min(max(by + inner // 2, 0), h - 1), min(max(bx + inner // 2, 0), w - 1)
            if not urban[cy, cx]:
                continue
            if rng.random() < 0.12:  # a large building or parking lot filling most of the block
                y0, x0 = by + rng.integers(4, 12), bx + rng.integers(4, 12)
                y1, x1 = by + inner - rng.integers(4, 12), bx + inner - rng.integers(4, 12)
                ys, xs = slice(max(y0, 0), max(y1, 0)), slice(max(x0, 0), max(x1, 0))
                lc[ys, xs] = IMPERVIOUS
                tone[ys, xs] = rng.uniform(0.75, 1.25)
                if rng.random() < 0.6:
                    buildings[ys, xs] = True
                continue
            for ly in (by, by + half):
                for lx in range(bx, bx + inner - lot_w + 1, lot_w):
                    if rng.random() < 0.15:
                        continue  # empty lot
                    bh, bw = int(rng.integers(9, half - 10)), int(rng.integers(8, lot_w - 6))
                    y0 = ly + (int(rng.integers(4, 8)) if ly == by else half - bh - int(rng.integers(4, 8)))
                    x0 = lx + int(rng.integers(2, max(3, lot_w - bw - 1)))
                    ys, xs = slice(max(y0, 0), max(y0 + bh, 0)), slice(max(x0, 0), max(x0 + bw, 0))
                    buildings[ys, xs] = True
                    lc[ys, xs] = IMPERVIOUS
                    # Roofs range from dark shingles to bright metal/gravel.
                    tone[ys, xs] = rng.uniform(0.5, 1.4)
                    # A driveway from the house to the street.
                    dx = x0 + bw // 2
                    dys = (
                        slice(max(min(ly, y0), 0), max(y0, 0))
                        if ly == by
                        else slice(max(y0 + bh, 0), max(ly + half, 0))
                    )
                    lc[dys, max(dx - 2, 0) : max(dx + 2, 0)] = IMPERVIOUS
    streets = (rows[:, None] | cols[None, :]) & urban & ~water
    lc[streets] = ROAD
    tone[streets] = 1.0
    buildings &= lc == IMPERVIOUS
    return buildings


# Texture amplitude per raw class value: (crown-scale, pixel-scale, scene-scale).
_TEXTURE = {
    WATER: (0.0, 0.02, 0.15),  # flat, with slowly varying turbidity
    TREE: (0.22, 0.12, 0.0),  # crowns and gaps a few metres across
    LOWVEG: (0.05, 0.04, 0.0),
    BARREN: (0.08, 0.05, 0.0),
    IMPERVIOUS: (0.0, 0.04, 0.0),
    ROAD: (0.0, 0.04, 0.0),
}


def generate_scene(seed: int, size: int | tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene. Returns ``(image uint8 (4, H, W), lc uint8 (H, W))`` with raw lc values.

    ``size`` is an int (square) or ``(height, width)``; any size >= 64 works.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 64 or w < 64:
        raise ValueError(f"scene size must be at least 64x64, got {h}x{w}")
    rng = np.random.default_rng(seed)

    lc, tone, dryness, buildings = _land_cover(rng, h, w)
    image = _reflectance(rng, lc, tone, dryness)
    del tone, dryness
    _cast_shadows(rng, image, buildings)
    del buildings
    image = _sensor(rng, image)
    valid = _valid_area(rng, h, w)
    # Valid pixels never equal the nodata value in every band.
    np.rint(image, out=image)
    np.clip(image, 1, 255, out=image)
    out = image.astype(np.uint8)
    out[:, ~valid] = NAIP_NODATA
    lc[~valid] = NODATA
    return out, lc


def _land_cover(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, ...]:
    """The class map with its objects: ``(lc (H, W) raw lc values, tone (H, W) per-object
    brightness, dryness (H, W) senescent fraction, buildings (H, W) bool)``."""
    lc = np.full((h, w), LOWVEG, dtype=np.uint8)

    # Agricultural parcels: most are crops/grass of different vigour, some are bare soil.
    parcel_id, n_parcels = _parcels(rng, h, w)
    parcel_bare = rng.random(n_parcels) < 0.08
    parcel_tone = rng.uniform(0.8, 1.2, n_parcels).astype(np.float32)
    parcel_dry = (rng.uniform(0.0, 1.0, n_parcels) ** 2).astype(np.float32)  # senescent fraction
    bare = parcel_bare[parcel_id]
    bare |= _top_fraction(_fbm(rng, h, w, (60, 20), (1.0, 0.4)), rng.uniform(0.005, 0.02))
    lc[bare] = BARREN
    tone = parcel_tone[parcel_id]  # per-object brightness multiplier
    dryness = parcel_dry[parcel_id]
    del parcel_id, bare

    forest = _top_fraction(_fbm(rng, h, w, (350, 120, 35), (1.0, 0.5, 0.3)), rng.uniform(0.2, 0.4))
    lc[forest] = TREE

    urban = _top_fraction(_fbm(rng, h, w, (700, 250), (1.0, 0.4)), rng.uniform(0.12, 0.35))
    # Town: lawns, with yard and street trees.
    lc[urban & ~forest] = LOWVEG
    lc[_top_fraction(_smooth_noise(rng, h, w, 9.0), 0.25) & urban] = TREE
    del forest

    water = _top_fraction(_fbm(rng, h, w, (450, 150, 40), (1.0, 0.45, 0.2)), rng.uniform(0.03, 0.1))
    if rng.random() < 0.75:  # a river
        water |= _curved_band(rng, h, w, rng.uniform(14, 45), rng.uniform(30, 160), rng.uniform(500, 1500))
    lc[water] = WATER
    urban &= ~water

    buildings = _town(rng, lc, tone, urban, water)
    del urban, water

    # Country roads and a highway crossing the scene; bridges over water are road too.
    for i in range(int(rng.integers(2, 5))):
        width = rng.uniform(9, 14) if i == 0 else rng.uniform(4, 8)
        road = _curved_band(rng, h, w, width, rng.uniform(0, 120), rng.uniform(800, 3000))
        lc[road] = ROAD
        tone[road] = 1.15 if i == 0 else rng.uniform(0.85, 1.05)  # a concrete highway is lighter
    buildings &= lc == IMPERVIOUS
    return lc, tone, dryness, buildings


def _reflectance(
    rng: np.random.Generator, lc: np.ndarray, tone: np.ndarray, dryness: np.ndarray
) -> np.ndarray:
    """The (4, H, W) float32 image: per-class mean spectrum, per-object tone, per-class texture.
    ``tone`` is changed in place (trees and water keep their class's brightness)."""
    h, w = lc.shape
    lut = np.zeros((4, 256), dtype=np.float32)
    amp = np.zeros((3, 256), dtype=np.float32)
    for value, spectrum in SPECTRA.items():
        # Per-scene jitter: acquisitions differ in sun angle and phenology.
        lut[:, value] = np.asarray(spectrum) * rng.uniform(0.93, 1.07, 4)
        amp[:, value] = _TEXTURE[value]
    tone[(lc == TREE) | (lc == WATER)] = 1.0

    gain = amp[0][lc] * _smooth_noise(rng, h, w, 6.0)
    gain += amp[1][lc] * _fine_noise(rng, h, w)
    gain += amp[2][lc] * _smooth_noise(rng, h, w, 300.0)
    gain += 1.0
    gain *= tone
    image = lut[:, lc]  # (4, H, W)
    image *= gain[None]
    del gain
    # Dry grass and crops: redder, less NIR.
    dry = dryness * (lc == LOWVEG)
    image[0] += 32 * dry
    image[1] += 10 * dry
    image[3] -= 30 * dry
    del dry
    return image


def _cast_shadows(rng: np.random.Generator, image: np.ndarray, buildings: np.ndarray) -> None:
    """Darken, in place, the shadows buildings cast to the north-west of the roof (sun from the
    south-east)."""
    h, w = buildings.shape
    sy, sx = int(rng.integers(3, 7)), int(rng.integers(2, 6))
    shadow = np.zeros_like(buildings)
    shadow[: h - sy, : w - sx] = buildings[sy:, sx:]
    shadow &= ~buildings
    rows, cols = np.nonzero(shadow)
    image[:, rows, cols] *= np.float32(0.55)


def _sensor(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The sensor: PSF blur (mixed pixels at edges), slow illumination/haze, noise."""
    _, h, w = image.shape
    image = _blur3_(image)
    image *= (1.0 + 0.04 * _smooth_noise(rng, h, w, 900.0))[None]
    image += _uniform(rng, (4, h, w)) * np.float32(2.5)
    return image


def _valid_area(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The (H, W) valid mask: NAIP quarter quads sit rotated inside their tiles, leaving wedges
    of nodata; every scene has some."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    valid = np.ones((h, w), dtype=bool)
    sides = [s for s in range(4) if rng.random() < 0.3] or [int(rng.integers(0, 4))]
    for n, side in enumerate(sides):
        extent = w if side < 2 else h
        a, b = rng.uniform(0.0, 0.05, 2) * extent
        if n == 0:  # every scene has some nodata
            a = max(a, 0.015 * extent)
        if side == 0:  # left edge, varying with row
            valid &= xx >= a + (b - a) * yy / h
        elif side == 1:  # right edge
            valid &= xx < w - (a + (b - a) * yy / h)
        elif side == 2:  # top edge, varying with column
            valid &= yy >= a + (b - a) * xx / w
        else:
            valid &= yy < h - (a + (b - a) * xx / w)
    return valid


def scene_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of scene ``index`` of ``split``: distinct per split, so held-out scenes
    never repeat training scenes."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1)[0])


def scene_transform(seed: int) -> Affine:
    """A 1 m UTM transform somewhere over the Chesapeake watershed (zone 18N), fixed by seed."""
    rng = np.random.default_rng([seed, 7])
    x0 = 300_000 + int(rng.integers(0, 150)) * 1000
    y0 = 4_200_000 + int(rng.integers(0, 300)) * 1000
    return Affine(1.0, 0.0, x0, 0.0, -1.0, y0)  # north-up, 1 m pixels


def make_scene(seed: int, size: int | tuple[int, int] = DEFAULT_SIZE) -> SyntheticScene:
    """:func:`generate_scene` plus a georeference."""
    image, lc = generate_scene(seed, size)
    return SyntheticScene(image, lc, scene_transform(seed), DEFAULT_CRS, seed)


# --- writing -----------------------------------------------------------------------------------


def _tiff_profile(count: int, h: int, w: int, transform: Affine, crs: str) -> dict:
    block = 256 if min(h, w) >= 256 else 16 * max(1, min(h, w) // 16)
    return {
        "driver": "GTiff",
        "count": count,
        "height": h,
        "width": w,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 4,  # close to level 6's size, noticeably faster
        "interleave": "pixel",
    }


def write_naip_tif(
    path: str | os.PathLike[str], image: np.ndarray, transform: Affine, crs: str, **tags: str
) -> None:
    """Write a 4-band uint8 NAIP-style GeoTIFF (tiled, deflate, nodata=0) to a local path."""
    _, h, w = image.shape
    profile = _tiff_profile(image.shape[0], h, w, transform, crs)
    if image.shape[0] == 4:
        # RGB + an *unspecified* extra sample: without ALPHA=UNSPECIFIED GDAL tags NIR as alpha.
        profile.update(photometric="RGB", alpha="UNSPECIFIED")
    with rasterio.open(path, "w", nodata=NAIP_NODATA, **profile) as dst:
        dst.write(image)
        for i, name in enumerate(NAIP_BANDS[: image.shape[0]], start=1):
            dst.set_band_description(i, name)
        dst.update_tags(**tags)


def write_lc_tif(
    path: str | os.PathLike[str], lc: np.ndarray, transform: Affine, crs: str, **tags: str
) -> None:
    """Write a raw-value Chesapeake ``lc`` label GeoTIFF with a colormap to a local path."""
    h, w = lc.shape
    with rasterio.open(path, "w", **_tiff_profile(1, h, w, transform, crs)) as dst:
        # The colour table before the pixels: once they are flushed GDAL cannot make the band
        # paletted ("Cannot modify tag PhotometricInterpretation while writing"), and it is lost.
        dst.write_colormap(1, SOURCE_COLORMAP)
        dst.set_band_description(1, "lc")
        dst.update_tags(**tags)
        dst.write(lc, 1)


def scene_uris(root_uri: str, split: str, scene_id: str) -> tuple[str, str]:
    """(image URI, label URI) of a scene in the Chesapeake layout."""
    base = storage.join(storage.to_uri(root_uri), split, scene_id)
    return base + IMAGE_SUFFIX, base + LABEL_SUFFIX


def write_scene(root_uri: str, split: str, scene_id: str, scene: SyntheticScene) -> SceneRecord:
    """Write a scene's image and label under ``root_uri`` (local or s3://) and return its record.

    Files are written to a local temp folder first and then copied through the storage layer,
    so a crash never leaves a half-written GeoTIFF at the destination. The label goes last:
    a scene counts as present only when its label exists.
    """
    image_uri, label_uri = scene_uris(root_uri, split, scene_id)
    tags = {"synthetic_seed": str(scene.seed), "generator": f"training.data.synthetic v{GENERATOR_VERSION}"}
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        img_path = Path(tmp) / f"{scene_id}{IMAGE_SUFFIX}"
        lc_path = Path(tmp) / f"{scene_id}{LABEL_SUFFIX}"
        write_naip_tif(img_path, scene.image, scene.transform, scene.crs, **tags)
        write_lc_tif(lc_path, scene.lc, scene.transform, scene.crs, **tags)
        storage.upload(img_path, image_uri)
        storage.upload(lc_path, label_uri)
    return SceneRecord(scene_id, image_uri, label_uri, split)


def _build_one(args: tuple[str, str, str, int, int]) -> tuple[str, str, float]:
    root_uri, split, scene_id, seed, size = args
    start = time.perf_counter()
    write_scene(root_uri, split, scene_id, make_scene(seed, size))
    return split, scene_id, time.perf_counter() - start


def generate_dataset(
    root_uri: str = DEFAULT_SYNTHETIC_ROOT,
    scenes_per_split: int = DEFAULT_SCENES_PER_SPLIT,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    splits: Sequence[str] = SPLITS,
    workers: int | None = None,
) -> list[SceneRecord]:
    """Write ``scenes_per_split`` scenes for each split under ``root_uri``; idempotent.

    Scenes whose image and label already exist are skipped unless ``overwrite``. ``workers``
    defaults to up to 2 processes. Prints one progress line per scene.
    """
    root = storage.to_uri(root_uri)
    jobs: list[tuple[str, str, str, int, int]] = []
    records: list[SceneRecord] = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        for i in range(scenes_per_split):
            scene_id = f"synth-{split}-{i:03d}"
            image_uri, label_uri = scene_uris(root, split, scene_id)
            records.append(SceneRecord(scene_id, image_uri, label_uri, split))
            if not overwrite and storage.exists(label_uri) and storage.exists(image_uri):
                log.info("skip   %s/%s (exists)", split, scene_id)
                continue
            jobs.append((root, split, scene_id, scene_seed(seed, split, i), size))
    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(jobs))
    start = time.perf_counter()
    if workers <= 1 or len(jobs) <= 1:
        results = map(_build_one, jobs)
        for n, (split, scene_id, secs) in enumerate(results, start=1):
            log.info("[%d/%d] wrote %s/%s %dx%d in %.1fs", n, len(jobs), split, scene_id, size, size, secs)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for n, (split, scene_id, secs) in enumerate(pool.map(_build_one, jobs), start=1):
                log.info(
                    "[%d/%d] wrote %s/%s %dx%d in %.1fs", n, len(jobs), split, scene_id, size, size, secs
                )
    if jobs:
        log.info("generated %d scene(s) under %s in %.1fs", len(jobs), root, time.perf_counter() - start)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate synthetic NAIP + Chesapeake lc scenes (GeoTIFF).")
    parser.add_argument(
        "--root", default=DEFAULT_SYNTHETIC_ROOT, help="dataset root: a folder, file:// or s3:// URI"
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="scene width and height in pixels")
    parser.add_argument("--scenes-per-split", type=int, default=DEFAULT_SCENES_PER_SPLIT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate scenes that already exist")
    args = parser.parse_args(argv)
    configure_console()
    generate_dataset(
        args.root, args.scenes_per_split, args.size, args.seed, overwrite=args.overwrite, workers=args.workers
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

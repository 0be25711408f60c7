"""Builders of tiny GeoTIFFs for tests: good NAIP scenes, Chesapeake layouts and each bad kind.

``write_bad_naip(path, kind)`` takes the reason codes of
:class:`core.naip.NaipValidationError` subclasses (``BAD_KINDS``), so a quarantine test
can write a file and expect exactly that ``reason`` back. Sizes are small (default 64 px) so
hundreds of files cost milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from rasterio.transform import Affine

from core.naip import REASON_CODES
from training.data.synthetic import generate_scene, write_lc_tif, write_naip_tif

CRS = "EPSG:32618"
TRANSFORM = Affine(1.0, 0.0, 400_000.0, 0.0, -1.0, 4_300_000.0)  # north-up, 1 m, UTM 18N
#: Every bad-input kind ``write_bad_naip`` can write; equal to the NAIP reason codes.
BAD_KINDS: tuple[str, ...] = tuple(REASON_CODES)
#: Side of the ``too_large`` file: 10240**2 = 104.9 Mpx, over the default 100 Mpx limit.
TOO_LARGE_SIZE = 10240


def naip_array(size: int = 64, seed: int = 0, nodata_border: int = 0) -> np.ndarray:
    """Random NAIP-like uint8 ``(4, size, size)`` with values 1..255, optionally a zero border."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, size=(4, size, size), dtype=np.uint8)
    if nodata_border:
        image[:, :nodata_border, :] = 0
        image[:, :, :nodata_border] = 0
    return image


def write_naip(
    path: str | os.PathLike[str],
    size: int = 64,
    seed: int = 0,
    image: np.ndarray | None = None,
    nodata_border: int = 0,
) -> Path:
    """A valid 4-band uint8 NAIP GeoTIFF (UTM, 1 m, nodata=0) at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = naip_array(size, seed, nodata_border) if image is None else image
    write_naip_tif(path, data, TRANSFORM, CRS)
    return path


def write_lc(path: str | os.PathLike[str], lc: np.ndarray) -> Path:
    """A raw-value Chesapeake ``lc`` label GeoTIFF at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lc_tif(path, lc.astype(np.uint8), TRANSFORM, CRS)
    return path


def write_class_ids(path: str | os.PathLike[str], ids: np.ndarray) -> Path:
    """A single-band uint8 raster of model class ids 0..6 (a prediction) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = ids.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint8", crs=CRS, transform=TRANSFORM
    ) as dst:
        dst.write(ids.astype(np.uint8), 1)
    return path


def write_scene_pair(
    folder: str | os.PathLike[str], scene_id: str, size: int = 64, seed: int = 0
) -> tuple[Path, Path]:
    """A synthetic image + label pair ``<folder>/<scene_id>_naip-new.tif`` / ``_lc.tif``."""
    image, lc = generate_scene(seed, max(size, 64))
    image, lc = image[:, :size, :size], lc[:size, :size]
    folder = Path(folder)
    return (
        write_naip(folder / f"{scene_id}_naip-new.tif", image=np.ascontiguousarray(image)),
        write_lc(folder / f"{scene_id}_lc.tif", np.ascontiguousarray(lc)),
    )


def write_bad_naip(path: str | os.PathLike[str], kind: str, size: int = 32) -> Path:
    """A file that fails NAIP validation with reason ``kind`` (one of ``BAD_KINDS``).

    ``too_large`` writes a sparse 10240x10240 file (~100 KB on disk) that exceeds the default
    ``max_pixels`` (100 Mpx); :func:`write_naip` plus :func:`too_large_limit` tests smaller limits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"driver": "GTiff", "height": size, "width": size, "crs": CRS, "transform": TRANSFORM}
    if kind == "unreadable":
        path.write_bytes(b"II*\x00" + b"this is not a tiff" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "band_count":
        with rasterio.open(path, "w", count=3, dtype="uint8", **base) as dst:
            dst.write(naip_array(size)[:3])
    elif kind == "dtype":
        data = naip_array(size).astype(np.float32)
        data[:, : size // 2, : size // 2] = np.nan
        with rasterio.open(path, "w", count=4, dtype="float32", **base) as dst:
            dst.write(data)
    elif kind == "missing_crs":
        no_crs = {k: v for k, v in base.items() if k != "crs"}
        with rasterio.open(path, "w", count=4, dtype="uint8", nodata=0, **no_crs) as dst:
            dst.write(naip_array(size))
    elif kind == "resolution":
        # 0.6 m pixels, as NAIP has been delivered in many states since 2018.
        fine = base["transform"] @ Affine.scale(0.6)
        with rasterio.open(path, "w", count=4, dtype="uint8", nodata=0, **{**base, "transform": fine}) as dst:
            dst.write(naip_array(size))
    elif kind == "all_nodata":
        write_naip(path, size=size, image=np.zeros((4, size, size), dtype=np.uint8))
    elif kind == "too_large":
        big = TOO_LARGE_SIZE
        # SPARSE_OK: unwritten tiles take no space, so a 105 Mpx raster is a tiny file.
        with rasterio.open(
            path,
            "w",
            count=4,
            dtype="uint8",
            nodata=0,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
            sparse_ok=True,
            **{**base, "height": big, "width": big},
        ) as dst:
            dst.write(naip_array(64), window=rasterio.windows.Window(0, 0, 64, 64))
    else:
        raise ValueError(f"unknown bad kind {kind!r}; expected one of {BAD_KINDS}")
    return path


def write_uint16_naip(path: str | os.PathLike[str], size: int = 32) -> Path:
    """A 4-band uint16 raster (fails with reason ``dtype``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"driver": "GTiff", "height": size, "width": size, "crs": CRS, "transform": TRANSFORM}
    with rasterio.open(path, "w", count=4, dtype="uint16", **base) as dst:
        dst.write(naip_array(size).astype(np.uint16) * 200)
    return path


def too_large_limit(size: int = 32) -> int:
    """A ``max_pixels`` that a ``write_bad_naip(..., "too_large", size)`` file exceeds."""
    return size * size - 1

"""The infer Lambda's synchronous API: a base64 image in, the class map and the class table out.

The request shape is the one the replaced deployment served, ``{"image": base64, "shape"?,
"dtype"?, "output_size"?}``; the response carries model class ids 0..6 and the class table that
names them. Every bad request raises :class:`inference.predict.InvalidImageError` with the
reason, which the handler answers as a 400.

Hostile input stays cheap: a raster's size, band count and data type are read from its header
before any pixel is decoded, so a small compressed payload that declares a huge raster is
refused without allocating it. ``.npy`` and raw payloads hold their pixels uncompressed, so their
size is bounded by the payload's (Lambda takes at most 6 MB); their declared shape is checked
against the bytes before anything is built from them.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.classes import NODATA_CLASS_ID, class_table
from core.naip import NAIP_BANDS, data_mask
from inference.predict import InvalidImageError, predict_array
from inference.runtime import Predictor
from inference.settings import DEFAULTS, ChainDefaults

__all__ = ["decode_image", "predict_request"]


def _check_size(height: int, width: int, max_pixels: int, what: str = "image") -> None:
    if height < 1 or width < 1:
        raise InvalidImageError(f"{what} is empty: {width}x{height}")
    if height * width > max_pixels:
        raise InvalidImageError(
            f"{what} is {width}x{height} = {height * width:,} pixels; the synchronous API takes at most "
            f"{max_pixels:,} (its response must fit Lambda's 6 MB; use the batch pipeline for scenes)"
        )


def _check_shape(shape: Sequence[int], max_pixels: int) -> None:
    """A declared array shape: (4, H, W) or (H, W, 4), within the size limit."""
    bands = len(NAIP_BANDS)
    if len(shape) == 3 and shape[0] == bands:
        height, width = shape[1], shape[2]
    elif len(shape) == 3 and shape[-1] == bands:
        height, width = shape[0], shape[1]
    else:
        raise InvalidImageError(
            f"image must have 4 bands (red, green, blue, nir) as (4, H, W); got shape {tuple(shape)}"
        )
    _check_size(int(height), int(width), max_pixels)


def _decode_npy(raw: bytes, max_pixels: int) -> np.ndarray:
    buffer = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(buffer)
        _check_shape(shape, max_pixels)
        buffer.seek(0)
        return np.load(buffer, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise InvalidImageError(f"image .npy cannot be read: {exc}") from exc


def _decode_raw(raw: bytes, shape: Sequence[int], dtype: str, max_pixels: int) -> np.ndarray:
    try:
        dims = tuple(int(s) for s in shape)
        kind = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidImageError(f"raw image needs an integer 'shape' and a numpy 'dtype': {exc}") from exc
    _check_shape(dims, max_pixels)
    if int(np.prod(dims)) * kind.itemsize != len(raw):
        raise InvalidImageError(
            f"{len(raw)} raw bytes do not form an array of shape {list(dims)} and dtype {kind.name}"
        )
    return np.frombuffer(raw, dtype=kind).reshape(dims)


def _decode_raster(raw: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(raw) as mem, mem.open() as ds:
            if ds.count != len(NAIP_BANDS):
                raise InvalidImageError(
                    f"image must have 4 bands (red, green, blue, nir); the raster has {ds.count}"
                )
            _check_size(int(ds.height), int(ds.width), max_pixels)
            return ds.read(), data_mask(ds)
    except RasterioError as exc:
        raise InvalidImageError(
            "image is neither a raster GDAL can read (GeoTIFF, PNG), a .npy array, nor raw bytes "
            f"with a 'shape': {exc}"
        ) from exc


def decode_image(
    data: str | bytes,
    shape: Sequence[int] | None = None,
    dtype: str = "uint8",
    *,
    max_pixels: int = DEFAULTS.max_request_pixels,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a base64 image. Returns ``(image, valid or None)``; see the module doc.

    Accepted payloads (after base64): a raster GDAL reads (GeoTIFF, PNG, ...; its data mask gives
    ``valid``), a ``.npy`` array, or raw bytes of ``shape`` (``(4, H, W)``) and ``dtype``.
    """
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"image is not valid base64: {exc}") from exc
    if not raw:
        raise InvalidImageError("image is empty")
    if raw.startswith(b"\x93NUMPY"):
        return _decode_npy(raw, max_pixels), None
    if shape is not None:
        return _decode_raw(raw, shape, dtype, max_pixels), None
    return _decode_raster(raw, max_pixels)


def _resample(classes: np.ndarray, size: Any, max_pixels: int) -> np.ndarray:
    """Nearest-neighbour resampling of the class map to ``size`` ``[H, W]``."""
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError) as exc:
        raise InvalidImageError(f"output_size must be [height, width], got {size!r}") from exc
    if height < 1 or width < 1 or height * width > max_pixels:
        raise InvalidImageError(f"output_size {size!r} must be positive and at most {max_pixels:,} pixels")
    rows = (np.arange(height) * classes.shape[0] // height)[:, None]
    cols = (np.arange(width) * classes.shape[1] // width)[None, :]
    return classes[rows, cols]


def predict_request(
    predictor: Predictor, body: dict[str, Any], settings: ChainDefaults = DEFAULTS
) -> dict[str, Any]:
    """Serve one request: ``{"prediction": [[ids]], "shape": [H, W], "classes": class table, ...}``.

    The window, batch and size limit come from ``settings``. ``output_size`` ``[H, W]`` resamples
    the class map (nearest neighbour). Raises :class:`InvalidImageError` for a bad request.
    """
    if not isinstance(body, dict) or not body.get("image"):
        raise InvalidImageError('request must be a JSON object with a base64 "image"')
    limit = settings.max_request_pixels
    image, valid = decode_image(
        body["image"], body.get("shape"), body.get("dtype", "uint8"), max_pixels=limit
    )
    pred = predict_array(
        predictor,
        image,
        valid,
        chip_size=settings.chip_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        low_confidence_threshold=settings.low_confidence_threshold,
    )
    classes = pred.classes
    if body.get("output_size") is not None:
        classes = _resample(classes, body["output_size"], limit)
    return {
        "prediction": classes.tolist(),
        "shape": list(classes.shape),
        "classes": class_table(),
        "nodata_class_id": NODATA_CLASS_ID,
        "mean_max_softmax": round(pred.mean_max_softmax, 6) if pred.n_valid else None,
    }

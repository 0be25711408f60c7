"""NAIP imagery: band constants, Clay normalisation, and a validating scene reader.

:func:`open_naip` opens a 4-band uint8 NAIP GeoTIFF from a local path, ``file://`` or ``s3://``
URI and checks it before anyone reads a pixel. Each way a file can be unusable has its own
exception class, all subclasses of :class:`NaipValidationError`, and each carries a short
``reason`` code that the inference ledger stores when it quarantines a scene.

What real NAIP deliveries get (the contract: red, green, blue, nir as uint8, 1 m):

* 3-band RGB (NAIP's "visualization" product): ``band_count``; the model needs NIR and there is
  no RGB-only model.
* 16-bit (uint16) files: ``dtype``. Their digital numbers are on a producer-specific scale
  (sensor counts, commonly 11-12 of the 16 bits used), and the 8-bit product is not a fixed
  rescale of them (it is tone-balanced per tile); Clay's NAIP means and stds describe 8-bit
  DNs, so any guessed rule would feed the model shifted inputs silently. Convert to 8 bits first.
* Pixels other than 1 m (0.6 m and 0.3 m NAIP since 2018 in many states): ``resolution``. The
  chain reads pixels as they are and the model was trained at 1 m, so objects would be the
  wrong size in pixels; resample to 1 m first (``gdalwarp -tr 1 1 -r average``).
* JPEG-compressed tiles, YCbCr 3-band ones included: GDAL decodes them to RGB(N) when read, so
  they are checked like any other (and a 3-band YCbCr file is still ``band_count``).
* Nodata: a pixel is nodata when *every* band equals the file's declared nodata value (0 or
  255 alike), or where the file's own mask band says so. Without a declared value no pixel is
  nodata: 0 and 255 are data. A band GDAL tags as alpha (some NAIP files tag NIR so) is never
  taken as the mask (:func:`data_mask`).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from core import storage
from core.limits import DEFAULT_MAX_PIXELS

NAIP_BANDS: tuple[str, ...] = ("red", "green", "blue", "nir")
#: Central wavelengths (µm) that Clay's dynamic patch embedding uses for NAIP.
NAIP_WAVELENGTHS_UM: tuple[float, ...] = (0.65, 0.56, 0.48, 0.842)
NAIP_GSD_M: float = 1.0
#: Relative deviation from NAIP_GSD_M a pixel side may have (reprojection rounding) and still pass.
NAIP_GSD_TOLERANCE: float = 0.05
#: Clay v1.5 metadata normalisation for NAIP (per band, in band order).
NAIP_MEANS: tuple[float, ...] = (110.16, 115.41, 98.15, 139.04)
NAIP_STDS: tuple[float, ...] = (47.23, 39.82, 35.43, 49.86)
NAIP_DTYPE = "uint8"
#: Nodata value our writers use on imagery (real NAIP tiles usually declare none).
NAIP_NODATA: int = 0


class NaipValidationError(ValueError):
    """A file is not a usable NAIP scene. ``reason`` is a short machine-readable code."""

    reason: ClassVar[str] = "invalid"

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(f"{uri}: {detail}")
        self.uri = uri
        self.detail = detail


class NaipUnreadableError(NaipValidationError):
    """GDAL cannot open or decode the file (corrupt or not a raster)."""

    reason = "unreadable"


class NaipEmptyError(NaipValidationError):
    """The file has zero bytes."""

    reason = "empty"


class NaipBandCountError(NaipValidationError):
    """The raster does not have the 4 NAIP bands."""

    reason = "band_count"


class NaipDtypeError(NaipValidationError):
    """The raster is not uint8 (e.g. uint16 or float, possibly with NaNs)."""

    reason = "dtype"


class NaipMissingCrsError(NaipValidationError):
    """The raster has no coordinate reference system."""

    reason = "missing_crs"


class NaipResolutionError(NaipValidationError):
    """The pixels are not 1 m (e.g. 0.6 m NAIP); the chain does not resample."""

    reason = "resolution"


class NaipAllNodataError(NaipValidationError):
    """Every pixel is nodata."""

    reason = "all_nodata"


class NaipTooLargeError(NaipValidationError):
    """The raster has more pixels than the configured limit."""

    reason = "too_large"


#: reason code -> exception class, for the ledger and for tests.
REASON_CODES: dict[str, type[NaipValidationError]] = {
    cls.reason: cls
    for cls in (
        NaipUnreadableError,
        NaipEmptyError,
        NaipBandCountError,
        NaipDtypeError,
        NaipMissingCrsError,
        NaipResolutionError,
        NaipAllNodataError,
        NaipTooLargeError,
    )
}


def normalize(chips: np.ndarray) -> np.ndarray:
    """Clay-normalise uint8 NAIP ``[..., 4, H, W]`` to float32 ``(x - mean) / std`` per band."""
    arr = np.asarray(chips)
    if arr.ndim < 3 or arr.shape[-3] != len(NAIP_BANDS):
        raise ValueError(f"expected NAIP chips shaped [..., 4, H, W], got shape {arr.shape}")
    mean = np.asarray(NAIP_MEANS, dtype=np.float32).reshape(4, 1, 1)
    std = np.asarray(NAIP_STDS, dtype=np.float32).reshape(4, 1, 1)
    return (arr.astype(np.float32) - mean) / std


class NaipScene:
    """An open, validated NAIP scene. Use :func:`open_naip` to make one, as a context manager."""

    def __init__(self, uri: str, dataset: Any, stack: ExitStack) -> None:
        self.uri = uri
        self.dataset = dataset
        self._stack = stack

    # -- metadata -------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return int(self.dataset.height)

    @property
    def width(self) -> int:
        return int(self.dataset.width)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def count(self) -> int:
        return int(self.dataset.count)

    @property
    def crs(self) -> rasterio.crs.CRS:
        return self.dataset.crs

    @property
    def transform(self) -> rasterio.Affine:
        return self.dataset.transform

    @property
    def bounds(self) -> rasterio.coords.BoundingBox:
        return self.dataset.bounds

    @property
    def nodata(self) -> float | None:
        return self.dataset.nodata

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self.dataset.profile)

    # -- pixels ---------------------------------------------------------------------------
    def read(self, window: Window | None = None) -> np.ndarray:
        """Pixels as uint8 ``(4, h, w)``; the whole scene when ``window`` is None."""
        try:
            return self.dataset.read(window=window)
        except RasterioError as exc:
            raise NaipUnreadableError(self.uri, f"pixel data cannot be decoded (truncated?): {exc}") from exc

    def valid_mask(self, window: Window | None = None) -> np.ndarray:
        """Boolean ``(h, w)``: True where the pixel holds data (see :func:`data_mask`)."""
        try:
            return data_mask(self.dataset, window)
        except RasterioError as exc:
            raise NaipUnreadableError(self.uri, f"mask cannot be decoded (truncated?): {exc}") from exc

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> NaipScene:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NaipScene({self.uri!r}, {self.width}x{self.height}, crs={self.crs})"


def open_raster(uri: str, stack: ExitStack) -> Any:
    """Open any raster at a path or URI with rasterio, registered on ``stack`` for closing.

    Local files go straight to GDAL. Remote objects are read through the storage layer's fsspec
    filesystem (rasterio's ``opener``), so windowed reads fetch byte ranges rather than the
    whole object.
    """
    local = storage.local_path(uri)
    if local is not None:
        return stack.enter_context(rasterio.open(local))
    fs, path = storage.filesystem(uri)
    # Without this GDAL lists the "directory" looking for sidecar files: one wasted LIST per open.
    stack.enter_context(rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"))
    return stack.enter_context(rasterio.open(path, opener=fs))


def open_naip(uri: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, check_nodata: bool = True) -> NaipScene:
    """Open and validate a NAIP scene.

    Args:
        uri: local path, ``file://`` or ``s3://`` URI of a GeoTIFF.
        max_pixels: refuse rasters with more than this many pixels (None: no limit).
        check_nodata: scan the mask (block by block, stopping at the first valid pixel) and
            refuse scenes that are entirely nodata.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
        NaipValidationError: one of its subclasses, naming the problem (see ``REASON_CODES``).
    """
    uri = str(uri)
    fs, path = storage.filesystem(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no NAIP scene at {uri}") from exc
    if not size:
        raise NaipEmptyError(uri, "file is empty (0 bytes); expected a 4-band uint8 GeoTIFF")

    stack = ExitStack()
    try:
        try:
            ds = open_raster(uri, stack)
        except RasterioError as exc:
            raise NaipUnreadableError(
                uri, f"cannot be opened as a raster ({size} bytes; corrupt or not a GeoTIFF): {exc}"
            ) from exc
        _validate(uri, ds, max_pixels, check_nodata)
    except BaseException:
        stack.close()
        raise
    return NaipScene(uri, ds, stack)


def validate_naip(uri: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Validate a scene and return its metadata (:func:`raster_header`'s keys); raises like
    :func:`open_naip`."""
    with open_naip(uri, max_pixels=max_pixels) as scene:
        return {"uri": uri, **raster_header(scene.dataset)}


def raster_header(ds: Any) -> dict[str, Any]:
    """What an open dataset's header says: size, CRS, bounds, nodata, bands, dtypes, compression and
    pixel size in metres (None without a CRS). Reads no pixel."""
    return {
        "width": int(ds.width),
        "height": int(ds.height),
        "crs": ds.crs.to_string() if ds.crs is not None else None,
        "bounds": list(ds.bounds),
        "nodata": ds.nodata,
        "count": int(ds.count),
        "dtypes": list(ds.dtypes),
        "compression": ds.compression.value if ds.compression is not None else None,
        "photometric": ds.photometric.name if ds.photometric is not None else None,
        "gsd_m": list(pixel_size_m(ds)) if ds.crs is not None else None,
    }


def describe_raster(uri: str) -> dict[str, Any] | None:
    """:func:`raster_header` of whatever raster is at ``uri``, valid NAIP or not; None when GDAL
    cannot open it (an empty or corrupt file)."""
    with ExitStack() as stack:
        try:
            return {"uri": str(uri), **raster_header(open_raster(str(uri), stack))}
        except (RasterioError, FileNotFoundError, OSError):
            return None


def pixel_size_m(ds: Any) -> tuple[float, float]:
    """``(x, y)`` pixel side in metres of a dataset with a CRS.

    Projected CRSs scale by their linear unit; geographic ones (degrees) convert at the
    scene's central latitude, which is close enough to tell 0.6 m from 1 m.
    """
    xres, yres = (abs(float(r)) for r in ds.res)
    if ds.crs.is_geographic:
        bounds = ds.bounds
        lat = math.radians((bounds.bottom + bounds.top) / 2)
        # Metres per degree of longitude and latitude on the WGS84 ellipsoid (first terms).
        return (xres * 111_320.0 * math.cos(lat), yres * 110_574.0)
    factor = float(ds.crs.linear_units_factor[1])
    return (xres * factor, yres * factor)


def data_mask(ds: Any, window: Window | None = None) -> np.ndarray:
    """Boolean ``(h, w)``: True where a pixel of the open dataset ``ds`` holds data.

    GDAL's dataset mask (nodata value, mask band), except when a band is tagged as alpha: some
    NAIP files tag their 4th band (NIR) so, and GDAL would then take the mask from NIR, dropping
    every NIR = 0 pixel. For those the mask comes from the nodata value alone (all valid without one).
    """
    if ColorInterp.alpha not in ds.colorinterp:
        return ds.dataset_mask(window=window) > 0
    if ds.nodata is None:
        height, width = (ds.height, ds.width) if window is None else (int(window.height), int(window.width))
        return np.ones((height, width), dtype=bool)
    return (ds.read(window=window) != ds.nodata).any(axis=0)


def _validate(uri: str, ds: Any, max_pixels: int | None, check_nodata: bool) -> None:
    pixels = int(ds.width) * int(ds.height)
    if max_pixels is not None and pixels > max_pixels:
        raise NaipTooLargeError(
            uri,
            f"{ds.width}x{ds.height} = {pixels:,} pixels exceeds the limit of {max_pixels:,}; "
            "split the scene into tiles or raise max_pixels",
        )
    if ds.count == 3:
        raise NaipBandCountError(
            uri,
            "has 3 bands (RGB, no near-infrared); the model needs 4 bands red, green, blue, nir: NIR is "
            "required (use NAIP's 4-band product, not the 3-band RGB one)",
        )
    if ds.count != len(NAIP_BANDS):
        raise NaipBandCountError(
            uri, f"has {ds.count} band(s); expected 4 (red, green, blue, nir) in NAIP band order"
        )
    dtypes = set(ds.dtypes)
    if dtypes != {NAIP_DTYPE}:
        raise NaipDtypeError(uri, _dtype_detail(ds, dtypes))
    if ds.crs is None:
        raise NaipMissingCrsError(
            uri, "has no CRS; expected a georeferenced GeoTIFF (NAIP tiles are in UTM, e.g. EPSG:26918)"
        )
    gsd = pixel_size_m(ds)
    if any(abs(side / NAIP_GSD_M - 1.0) > NAIP_GSD_TOLERANCE for side in gsd):
        raise NaipResolutionError(
            uri,
            f"has {gsd[0]:.3g} x {gsd[1]:.3g} m pixels; expected {NAIP_GSD_M:g} m (the model was trained "
            f"at {NAIP_GSD_M:g} m and the chain does not resample): resample first, e.g. "
            "`gdalwarp -tr 1 1 -r average in.tif out.tif` in the scene's projected CRS",
        )
    if check_nodata and not _any_valid(uri, ds):
        raise NaipAllNodataError(
            uri, f"every pixel is nodata (nodata={ds.nodata}); expected at least some imagery"
        )


def _dtype_detail(ds: Any, dtypes: set[str]) -> str:
    """Why a non-uint8 raster is refused, worded for what it holds."""
    found = ", ".join(sorted(dtypes))
    sample = _sample(ds)
    if any(np.dtype(d).kind == "f" for d in dtypes):
        nan = " and contains NaN values" if sample is not None and bool(np.isnan(sample).any()) else ""
        return f"has dtype {found}{nan}; expected uint8 digital numbers (0..255) as NAIP is delivered"
    top = "" if sample is None else f" (values up to about {int(np.max(sample))})"
    return (
        f"has dtype {found}{top}; expected uint8 digital numbers (0..255). A 16-bit file's scale "
        "depends on its producer and the 8-bit NAIP product is no fixed rescale of it, so no rule here "
        "maps it onto the 8-bit values the model's normalisation expects: convert it to 8 bits first "
        "(e.g. `gdal_translate -ot Byte -scale <min> <max> 0 255`, with the range your provider states)"
    )


def _sample(ds: Any) -> np.ndarray | None:
    # A decimated read is enough to word the message; it is not the check itself.
    scale = max(1, math.ceil(max(ds.height, ds.width) / 512))
    try:
        return ds.read(out_shape=(ds.count, max(1, ds.height // scale), max(1, ds.width // scale)))
    except RasterioError:
        return None


def _any_valid(uri: str, ds: Any) -> bool:
    """True as soon as one block holds a valid pixel; reads only as far as it must."""
    if all(MaskFlags.all_valid in flags for flags in ds.mask_flag_enums):
        return True
    try:
        for _, window in ds.block_windows(1):
            if data_mask(ds, window).any():
                return True
    except RasterioError as exc:
        raise NaipUnreadableError(uri, f"pixel data cannot be decoded (truncated?): {exc}") from exc
    return False


def stretch_rgb(
    image: np.ndarray, valid: np.ndarray | None = None, low: float = 2, high: float = 98
) -> np.ndarray:
    """uint8 ``(>=3, H, W)`` -> float ``(H, W, 3)`` in 0..1, stretched between percentiles of
    the valid pixels; nodata shows white."""
    rgb = image[:3].astype(np.float32)
    mask = np.ones(rgb.shape[1:], dtype=bool) if valid is None else valid
    if mask.any():
        lo = np.percentile(rgb[:, mask], low, axis=1)[:, None, None]
        hi = np.percentile(rgb[:, mask], high, axis=1)[:, None, None]
    else:
        lo, hi = np.zeros((3, 1, 1)), np.full((3, 1, 1), 255.0)
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)
    out[~mask] = 1.0
    return out

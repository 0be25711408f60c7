"""Per-scene products: a class COG, a confidence COG and a STAC item.

COGs are built locally (an in-memory GeoTIFF turned into a COG by GDAL's COG driver: internal tiles,
overviews, deflate) and then copied to the destination through :mod:`core.storage`, so a
``s3://`` URI works the same as a local path and a crash never leaves half a COG behind. Both
rasters keep the input's CRS and transform.

- class COG: uint8 model class ids, nodata = ``NODATA_CLASS_ID`` (6, "No Data"), a GDAL colour
  table from ``COLORMAP``, the class table as JSON in the ``CLASS_TABLE`` tag, class names as
  ``CLASS_<id>`` tags, overviews by mode (majority), so zoomed-out views stay categorical.
- confidence COG: uint8 max softmax x 255 (band scale 1/255 set, so GDAL-aware readers see
  probabilities), nodata 0, overviews by average.
- STAC item: projection extension (``proj:code``, ``proj:shape``, ``proj:transform``,
  ``proj:bbox``), classification extension on the class asset, assets ``class``/``confidence``/
  ``input``/``thumbnail`` (the quicklook PNG) and lineage properties ``model_version`` and
  ``input_sha256``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from rasterio.io import MemoryFile

from core import storage
from core.classes import CLASS_NAMES, COLORMAP, NODATA_CLASS_ID, class_table
from inference.predict import CONFIDENCE_SCALE, ScenePrediction
from inference.quicklook import QUICKLOOK_MEDIA_TYPE

__all__ = [
    "COG_MEDIA_TYPE",
    "CONFIDENCE_NODATA",
    "stac_item",
    "validate_stac_item",
    "write_class_cog",
    "write_confidence_cog",
    "write_stac_item",
]

log = logging.getLogger(__name__)

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
CONFIDENCE_NODATA = 0


def _blocksize(height: int, width: int) -> int:
    return 512 if min(height, width) >= 512 else 256


def _overview_level(height: int, width: int, block: int) -> int:
    """Enough 2x levels to bring the longer side to one block (at least one level)."""
    return max(1, math.ceil(math.log2(max(height, width, 2) / block)))


def _write_cog(
    array: np.ndarray,
    uri: str,
    pred: ScenePrediction,
    *,
    nodata: int,
    resampling: str,
    description: str,
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    scale: float | None = None,
) -> str:
    from rasterio.shutil import copy as gdal_copy

    if pred.crs is None or pred.transform is None:
        raise ValueError(
            "the prediction has no georeference (crs/transform); predict a GeoTIFF with predict_scene, "
            "or set pred.crs and pred.transform before writing a COG"
        )
    height, width = array.shape
    block = _blocksize(height, width)
    src_profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": "uint8",
        "crs": pred.crs,
        "transform": pred.transform,
        "nodata": nodata,
    }
    with tempfile.TemporaryDirectory(prefix="cog-") as tmp:
        local = Path(tmp) / "out.tif"
        with MemoryFile() as mem:
            with mem.open(**src_profile) as dst:
                # The colour table before any pixel: once pixels are flushed GDAL cannot switch
                # the band to palette any more.
                if colormap is not None:
                    dst.write_colormap(1, colormap)
                dst.set_band_description(1, description)
                dst.update_tags(**tags, OVERVIEW_RESAMPLING=resampling.upper())  # how overviews were made
                if scale is not None:
                    dst.scales = (scale,)
                    dst.offsets = (0.0,)
                dst.write(array, 1)
            # GDAL's COG driver builds the overviews from the finished (closed) raster, colour
            # table included: overviews built on a raster still open for writing (rio-cogeo's
            # way) do not see the palette, and GDAL warns "Computing overviews on palette index
            # raster bands without a palette" for every class COG.
            with mem.open() as src:
                gdal_copy(
                    src,
                    str(local),
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="2",
                    BLOCKSIZE=str(block),
                    OVERVIEW_RESAMPLING=resampling.upper(),
                    OVERVIEW_COUNT=str(_overview_level(height, width, block)),
                )
        storage.upload(local, uri)
    return uri


def _lineage_tags(
    pred: ScenePrediction, model_version: str | None, input_sha256: str | None
) -> dict[str, str]:
    tags = {
        "SOURCE_URI": pred.source_uri or "",
        "CHIP_SIZE": str(pred.chip_size),
        "OVERLAP": str(pred.overlap),
    }
    if model_version is not None:
        tags["MODEL_VERSION"] = str(model_version)
    if input_sha256 is not None:
        tags["INPUT_SHA256"] = input_sha256
    return tags


def write_class_cog(
    pred: ScenePrediction,
    uri: str,
    *,
    model_version: str | None = None,
    input_sha256: str | None = None,
) -> str:
    """Write the class-id COG of ``pred`` to ``uri`` (local path, ``file://`` or ``s3://``); returns ``uri``."""
    tags = _lineage_tags(pred, model_version, input_sha256)
    tags["CLASS_TABLE"] = json.dumps(class_table())
    tags.update({f"CLASS_{i}": name for i, name in enumerate(CLASS_NAMES)})
    return _write_cog(
        pred.classes,
        uri,
        pred,
        nodata=NODATA_CLASS_ID,
        resampling="mode",
        description="class_id",
        tags=tags,
        colormap=COLORMAP,
    )


def write_confidence_cog(
    pred: ScenePrediction,
    uri: str,
    *,
    model_version: str | None = None,
    input_sha256: str | None = None,
) -> str:
    """Write the confidence COG (uint8 max softmax x 255, scale 1/255, nodata 0) to ``uri``."""
    tags = _lineage_tags(pred, model_version, input_sha256)
    tags["CONFIDENCE_SCALE"] = repr(CONFIDENCE_SCALE)
    tags["LOW_CONFIDENCE_THRESHOLD"] = str(pred.low_confidence_threshold)
    return _write_cog(
        pred.confidence,
        uri,
        pred,
        nodata=CONFIDENCE_NODATA,
        resampling="average",
        description="max_softmax",
        tags=tags,
        scale=CONFIDENCE_SCALE,
    )


def _footprint_wgs84(pred: ScenePrediction) -> tuple[dict[str, Any], list[float], list[float]]:
    """(GeoJSON polygon in WGS84, its bbox, the native bbox) of the scene's extent."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_geom

    height, width = pred.shape
    west, south, east, north = array_bounds(height, width, pred.transform)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    native = {"type": "Polygon", "coordinates": [ring]}
    geom = transform_geom(pred.crs, "EPSG:4326", native, antimeridian_cutting=True, precision=7)
    # Corner-only transform: at NAIP tile extents (a few km) edge curvature is sub-metre.
    coords = np.asarray(geom["coordinates"][0], dtype=float)
    bbox = [
        float(coords[:, 0].min()),
        float(coords[:, 1].min()),
        float(coords[:, 0].max()),
        float(coords[:, 1].max()),
    ]
    return dict(geom), bbox, [float(west), float(south), float(east), float(north)]


def stac_item(
    pred: ScenePrediction,
    *,
    item_id: str,
    class_uri: str,
    confidence_uri: str,
    input_uri: str | None = None,
    thumbnail_uri: str | None = None,
    model_version: str,
    input_sha256: str,
    model_name: str | None = None,
    acquired: datetime | None = None,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A STAC item (as a dict, validated with pystac) describing one predicted scene.

    Args:
        pred: the scene prediction (its georeference and summaries fill the item).
        item_id: the item id (e.g. the scene's ledger id or file stem).
        class_uri, confidence_uri: where the COGs were written.
        input_uri: the input image (defaults to ``pred.source_uri``).
        thumbnail_uri: the scene's quicklook PNG (:mod:`inference.quicklook`), linked as the
            ``thumbnail`` asset.
        model_version, input_sha256: lineage, stored as properties and checked non-empty.
        model_name: registry name of the model, stored as ``model_name``.
        acquired: the item datetime (acquisition); defaults to now (UTC).
        properties: extra properties to merge in.
    """
    import pystac

    _check_describable(pred, model_version, input_sha256)
    geometry, bbox, native_bbox = _footprint_wgs84(pred)
    now = datetime.now(UTC)
    props = _scene_properties(pred, now, model_version, input_sha256, model_name)
    props.update(properties or {})
    item = pystac.Item(
        id=str(item_id),
        geometry=geometry,
        bbox=bbox,
        datetime=acquired or now,
        properties=props,
    )
    _add_projection(item, pred, native_bbox)
    _add_assets(
        item,
        class_uri=class_uri,
        confidence_uri=confidence_uri,
        input_uri=input_uri or pred.source_uri,
        thumbnail_uri=thumbnail_uri,
        input_sha256=input_sha256,
    )
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    validate_stac_item(data)
    return data


def _check_describable(pred: ScenePrediction, model_version: str, input_sha256: str) -> None:
    """Refuse an item without lineage (model version, input digest) or georeference."""
    if not model_version:
        raise ValueError("model_version is required for lineage")
    if not input_sha256 or len(input_sha256) != 64:
        raise ValueError(f"input_sha256 must be a 64-character hex digest, got {input_sha256!r}")
    if pred.crs is None or pred.transform is None:
        raise ValueError("the prediction has no georeference (crs/transform); cannot describe it in STAC")


def _scene_properties(
    pred: ScenePrediction, now: datetime, model_version: str, input_sha256: str, model_name: str | None
) -> dict[str, Any]:
    """The item's properties: lineage and the prediction's summaries (``landcover:*``)."""
    fractions = pred.class_fractions
    props: dict[str, Any] = {
        "created": now.isoformat(),
        "model_version": str(model_version),
        "input_sha256": input_sha256,
        "landcover:class_fractions": {
            name: round(float(f), 6) for name, f in zip(CLASS_NAMES, fractions, strict=False)
        },
        "landcover:valid_area_km2": round(pred.valid_area_km2, 6),
        "landcover:mean_max_softmax": None if pred.n_valid == 0 else round(pred.mean_max_softmax, 6),
        "landcover:chip_size": pred.chip_size,
        "landcover:overlap": pred.overlap,
    }
    if model_name:
        props["model_name"] = model_name
    return props


def _add_projection(item: Any, pred: ScenePrediction, native_bbox: list[float]) -> None:
    """The projection extension: EPSG code (else WKT2), shape, transform and native bbox."""
    from pystac.extensions.projection import ProjectionExtension

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = pred.crs.to_epsg()
    if epsg is not None:
        proj.epsg = epsg
    else:
        proj.wkt2 = pred.crs.to_wkt()
    height, width = pred.shape
    proj.shape = [height, width]
    proj.transform = [float(v) for v in list(pred.transform)[:6]]
    proj.bbox = native_bbox


def _add_assets(
    item: Any,
    *,
    class_uri: str,
    confidence_uri: str,
    input_uri: str | None,
    thumbnail_uri: str | None,
    input_sha256: str,
) -> None:
    """The class COG (with the classification extension's class table), the confidence COG and,
    when known, the input image and the quicklook."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension

    class_asset = pystac.Asset(
        href=encode_href(class_uri),
        media_type=COG_MEDIA_TYPE,
        title="Land-cover class ids (Chesapeake 7-class)",
        roles=["data"],
        extra_fields={"nodata": NODATA_CLASS_ID},
    )
    item.add_asset("class", class_asset)
    ClassificationExtension.add_to(item)
    ClassificationExtension.ext(class_asset).classes = [
        Classification.create(
            value=c["id"], description=c["name"], name=_slug(c["name"]), color_hint=c["color"][1:].upper()
        )
        for c in class_table()
    ]
    item.add_asset(
        "confidence",
        pystac.Asset(
            href=encode_href(confidence_uri),
            media_type=COG_MEDIA_TYPE,
            title="Max softmax probability x 255 (scale 1/255)",
            roles=["data"],
            extra_fields={"nodata": CONFIDENCE_NODATA},
        ),
    )
    if input_uri:
        item.add_asset(
            "input",
            pystac.Asset(
                href=encode_href(input_uri),
                media_type="image/tiff; application=geotiff",
                title="NAIP input (red, green, blue, nir)",
                roles=["source"],
                extra_fields={"file:checksum": "1220" + input_sha256},
            ),
        )
    if thumbnail_uri:
        item.add_asset(
            "thumbnail",
            pystac.Asset(
                href=encode_href(thumbnail_uri),
                media_type=QUICKLOOK_MEDIA_TYPE,
                title="Quicklook: NAIP RGB beside the predicted classes (class table colours)",
                roles=["thumbnail"],
            ),
        )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def encode_href(uri: str) -> str:
    """``uri`` as a valid STAC href: the path percent-encoded (``#``, ``?``, spaces ...), the scheme
    and bucket kept, so a key named ``a#b.tif`` is not read as ``a`` plus a fragment."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return quote(uri, safe="/")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host}{slash}{quote(path, safe='/')}"


def validate_stac_item(item: dict[str, Any], check_extensions: bool = False) -> list[str]:
    """Validate a STAC item dict with pystac; returns the extension schemas that were checked.

    The core item schema ships with pystac and is always checked, offline. Extension schemas
    live on the web, so they are checked only when asked (``check_extensions``): a Lambda in a
    private subnet or an offline CI must not stall on schema downloads for every scene.

    Raises:
        pystac.errors.STACValidationError: the item does not validate.
        pystac.validation.stac_validator.GetSchemaError: an extension schema is unreachable.
    """
    from pystac.validation import validate_dict

    validate_dict(item, extensions=[])
    if not check_extensions:
        return []
    extensions = list(item.get("stac_extensions", []))
    for ext in extensions:
        validate_dict(item, extensions=[ext])
    return extensions


def write_stac_item(item: dict[str, Any], uri: str) -> str:
    """Write a STAC item dict as JSON to ``uri``; returns ``uri``."""
    storage.write_text(uri, json.dumps(item, indent=2))
    return uri

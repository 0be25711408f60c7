"""Class / confidence COGs (valid COGs, input georeferencing, colormap, s3://) and the STAC item."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from core import storage
from core.classes import COLORMAP, NODATA_CLASS_ID
from inference.outputs import (
    COG_MEDIA_TYPE,
    stac_item,
    validate_stac_item,
    write_class_cog,
    write_confidence_cog,
    write_stac_item,
)
from inference.predict import CONFIDENCE_SCALE, ScenePrediction, predict_array, predict_scene
from tests.data.builders import naip_array, write_naip
from tests.inference.helpers_core import LocalPredictor

# rio-cogeo builds a WarpedVRT with an Affine `*` product that affine deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[str, ScenePrediction, str]:
    path = write_naip(
        tmp_path_factory.mktemp("scene") / "scene.tif", image=naip_array(600, seed=5, nodata_border=30)
    )
    pred = predict_scene(LocalPredictor(), str(path), chip_size=128, overlap=32)
    return str(path), pred, hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_cog_like_input(cog: str, src: str) -> None:
    valid, errors, warnings = cog_validate(cog, quiet=True)
    assert valid and not errors, (errors, warnings)
    with rasterio.open(cog) as out, rasterio.open(src) as inp:
        assert out.crs == inp.crs and out.transform == inp.transform and out.shape == inp.shape
        assert out.dtypes == ("uint8",) and out.count == 1
        assert out.profile["tiled"] and out.overviews(1)


def test_class_cog(scene, tmp_path) -> None:
    src, pred, sha = scene
    uri = write_class_cog(pred, str(tmp_path / "class.tif"), model_version="v3", input_sha256=sha)
    _assert_cog_like_input(uri, src)
    with rasterio.open(uri) as cog:
        np.testing.assert_array_equal(cog.read(1), pred.classes)
        assert cog.nodata == NODATA_CLASS_ID
        cmap = cog.colormap(1)
        assert all(cmap[i][:3] == COLORMAP[i][:3] for i in COLORMAP)  # GDAL makes nodata transparent
        tags = cog.tags()
        assert tags["MODEL_VERSION"] == "v3" and tags["INPUT_SHA256"] == sha
        assert [c["id"] for c in json.loads(tags["CLASS_TABLE"])] == list(range(7))
        assert tags["CLASS_0"] == "Water" and tags["OVERVIEW_RESAMPLING"] == "MODE"


def test_confidence_cog(scene, tmp_path) -> None:
    src, pred, _ = scene
    uri = write_confidence_cog(pred, storage.to_uri(tmp_path / "confidence.tif"))
    _assert_cog_like_input(str(tmp_path / "confidence.tif"), src)
    with rasterio.open(tmp_path / "confidence.tif") as cog:
        data = cog.read(1)
        np.testing.assert_array_equal(data, pred.confidence)
        assert cog.nodata == 0 and cog.scales[0] == pytest.approx(CONFIDENCE_SCALE)
        assert (data[~pred.valid] == 0).all() and (data[pred.valid] > 0).all()
    assert uri.startswith("file://")


def test_cog_written_to_s3(scene, s3_bucket, tmp_path) -> None:
    src, pred, _ = scene
    uri = f"{s3_bucket}/predictions/scene/class.tif"
    write_class_cog(pred, uri, model_version="v1")
    assert storage.exists(uri)
    local = storage.download(uri, tmp_path / "from_s3.tif")
    _assert_cog_like_input(str(local), src)


def test_cog_needs_a_georeference() -> None:
    pred = predict_array(LocalPredictor(), np.ones((4, 32, 32), np.uint8), chip_size=32, overlap=8)
    with pytest.raises(ValueError, match="georeference"):
        write_class_cog(pred, "/tmp/never-written.tif")


def test_stac_item_validates_with_projection_and_lineage(scene, tmp_path) -> None:
    src, pred, sha = scene
    item = stac_item(
        pred,
        item_id="scene-42",
        class_uri="s3://out/scene-42/class.tif",
        confidence_uri="s3://out/scene-42/confidence.tif",
        model_version="v7",
        input_sha256=sha,
        model_name="landcover",
    )
    parsed = pystac.Item.from_dict(item)
    parsed_item = parsed.to_dict(include_self_link=False, transform_hrefs=False)
    validate_stac_item(parsed_item)
    props = item["properties"]
    assert props["model_version"] == "v7" and props["input_sha256"] == sha
    with rasterio.open(src) as inp:
        assert props["proj:code"] == f"EPSG:{inp.crs.to_epsg()}"
        assert props["proj:shape"] == [inp.height, inp.width]
        assert props["proj:transform"] == list(inp.transform)[:6]
    assert set(item["assets"]) == {"class", "confidence", "input"}
    assert item["assets"]["class"]["type"] == COG_MEDIA_TYPE
    assert item["assets"]["input"]["href"] == src
    classes = item["assets"]["class"]["classification:classes"]
    assert [c["value"] for c in classes] == list(range(7))
    west, south, east, north = item["bbox"]
    assert -80 < west < east < -70 and 35 < south < north < 45  # UTM 18N, Chesapeake
    assert sum(props["landcover:class_fractions"].values()) == pytest.approx(1.0, abs=1e-5)
    uri = write_stac_item(item, storage.to_uri(tmp_path / "item.json"))
    assert json.loads(storage.read_text(uri))["id"] == "scene-42"


def test_stac_item_requires_lineage(scene) -> None:
    _, pred, sha = scene
    kwargs = {"item_id": "x", "class_uri": "a.tif", "confidence_uri": "b.tif"}
    with pytest.raises(ValueError, match="model_version"):
        stac_item(pred, model_version="", input_sha256=sha, **kwargs)
    with pytest.raises(ValueError, match="sha256"):
        stac_item(pred, model_version="v1", input_sha256="abc", **kwargs)


def test_invalid_stac_item_is_rejected(scene) -> None:
    _, pred, sha = scene
    item = stac_item(
        pred, item_id="x", class_uri="a.tif", confidence_uri="b.tif", model_version="v1", input_sha256=sha
    )
    del item["properties"]["datetime"]
    with pytest.raises(pystac.errors.STACValidationError):
        validate_stac_item(item)


def test_stac_hrefs_are_encoded(scene) -> None:
    _, pred, sha = scene
    item = stac_item(
        pred,
        item_id="odd",
        class_uri="s3://out/odd #1?v=2/class.tif",
        confidence_uri="file:///tmp/odd dir/c#onf.tif",
        model_version="v7",
        input_sha256=sha,
        model_name="landcover",
    )
    hrefs = {k: a["href"] for k, a in item["assets"].items()}
    assert hrefs["class"] == "s3://out/odd%20%231%3Fv%3D2/class.tif"
    assert hrefs["confidence"] == "file:///tmp/odd%20dir/c%23onf.tif"
    assert not any(ch in h for h in hrefs.values() for ch in "#? ")
    validate_stac_item(pystac.Item.from_dict(item).to_dict(include_self_link=False, transform_hrefs=False))

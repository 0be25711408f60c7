"""Quicklook PNGs (RGB beside the predicted classes in the class table's colours, with a legend),
the STAC ``thumbnail`` asset, and class COGs written without GDAL warnings."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pytest
from PIL import Image

from core.classes import CLASSES, NODATA_CLASS_ID
from inference.outputs import stac_item, write_class_cog
from inference.predict import predict_scene
from inference.quicklook import legend_entries, render_quicklook, write_quicklook
from tests.data.builders import naip_array, write_naip
from tests.inference.helpers_core import LocalPredictor

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = write_naip(
        tmp_path_factory.mktemp("ql") / "scene.tif", image=naip_array(1024, seed=3, nodata_border=40)
    )
    pred = predict_scene(LocalPredictor(), str(path), chip_size=256, overlap=32)
    return str(path), pred


def _colours(png: bytes) -> dict[tuple[int, int, int], int]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {rgb: n for n, rgb in image.getcolors(maxcolors=1 << 22)}


def test_quicklook_draws_the_class_table_colours_beside_the_rgb(scene, tmp_path) -> None:
    path, pred = scene
    out = write_quicklook(pred, path, str(tmp_path / "q" / "quicklook.png"), title="scene · model v1")
    png = (tmp_path / "q" / "quicklook.png").read_bytes()
    assert out.endswith("quicklook.png") and png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    assert image.width > 2 * image.height * 0.9  # two panels side by side, plus the legend
    colours = _colours(png)
    present = np.unique(pred.classes)
    for c in CLASSES:
        if c.id in present and c.id != NODATA_CLASS_ID:
            assert colours.get(c.color, 0) > 50, f"{c.name} {c.color} missing from the class panel"
    # The RGB panel is a photo, not a flat fill: many distinct colours beyond the class table's.
    assert len(colours) > 500


def test_legend_shares_are_of_valid_pixels() -> None:
    classes = np.array([[0, 0, 2, NODATA_CLASS_ID]], dtype=np.uint8)
    entries = {label.split("  ")[0]: share for label, _, share in legend_entries(classes)}
    assert entries["Water"] == pytest.approx(2 / 3) and entries["Low Vegetation"] == pytest.approx(1 / 3)
    assert "No Data" in entries  # present, so listed
    no_nodata = legend_entries(np.zeros((2, 2), dtype=np.uint8))
    assert not any(label.startswith("No Data") for label, _, _ in no_nodata)


def test_quicklook_refuses_a_prediction_of_another_scene(scene, tmp_path) -> None:
    _, pred = scene
    other = write_naip(tmp_path / "other.tif", image=naip_array(300, seed=1))
    with pytest.raises(ValueError, match="not this scene's prediction"):
        write_quicklook(pred, str(other), str(tmp_path / "q.png"))
    with pytest.raises(ValueError, match="image is"):
        render_quicklook(np.zeros((3, 4, 4), np.uint8), np.zeros((5, 5), np.uint8))


def test_stac_item_links_the_quicklook_as_thumbnail(scene) -> None:
    path, pred = scene
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    item = stac_item(
        pred,
        item_id="s1",
        class_uri="file:///o/classes.tif",
        confidence_uri="file:///o/confidence.tif",
        thumbnail_uri="file:///o/quicklook.png",
        model_version="v1",
        input_sha256=sha,
    )
    thumb = item["assets"]["thumbnail"]
    assert thumb["href"] == "file:///o/quicklook.png"
    assert thumb["type"] == "image/png" and thumb["roles"] == ["thumbnail"]
    bare = stac_item(
        pred, item_id="s1", class_uri="c", confidence_uri="f", model_version="v1", input_sha256=sha
    )
    assert "thumbnail" not in bare["assets"]


def test_class_cog_is_written_without_gdal_warnings(scene, tmp_path, caplog) -> None:
    """A 1024 px class COG used to warn 'Computing overviews on palette index raster bands
    without a palette': the overviews were built before GDAL saw the colour table."""
    import rasterio

    _, pred = scene
    with caplog.at_level(logging.INFO, logger="rasterio"):
        uri = write_class_cog(pred, str(tmp_path / "classes.tif"), model_version="v1")
    gdal = [
        r.getMessage() for r in caplog.records if r.name.startswith("rasterio") and r.levelno >= logging.INFO
    ]
    assert not [m for m in gdal if "palette" in m.lower() or "error" in m.lower()], gdal
    with rasterio.open(uri) as cog:
        assert cog.overviews(1) and cog.colormap(1)[2][:3] == CLASSES[2].color
        # The overview keeps class ids (mode), coloured by the same table.
        overview = cog.read(1, out_shape=(cog.height // 2, cog.width // 2))
        assert set(np.unique(overview)) <= set(range(len(CLASSES)))

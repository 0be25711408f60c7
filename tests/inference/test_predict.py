"""Sliding-window prediction: tiling plan, seam agreement, edges, nodata, memory, sync API."""

from __future__ import annotations

import base64
import io
import tracemalloc

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile

from core.classes import NODATA_CLASS_ID
from core.naip import NaipValidationError, normalize
from inference.predict import (
    InvalidImageError,
    _ramps,
    axis_offsets,
    plan_tiling,
    predict_array,
    predict_scene,
)
from inference.settings import DEFAULTS
from inference.sync_api import predict_request
from tests.data.builders import CRS, TRANSFORM, naip_array, write_naip
from tests.inference.helpers_core import LocalPredictor, border_mask, tiny_predictor
from training.data.synthetic import make_scene


# --- tiling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 100, 128, 129, 255, 256, 257, 300, 500, 512, 1000, 2048, 7501])
@pytest.mark.parametrize(("chip", "overlap"), [(128, 32), (256, 32), (256, 64)])
def test_axis_offsets_cover_with_overlap(length: int, chip: int, overlap: int) -> None:
    offsets = axis_offsets(length, chip, overlap)
    padded = max(chip, -(-length // 8) * 8)
    assert offsets[0] == 0 and offsets[-1] + chip == padded
    assert all(o % 8 == 0 for o in offsets)
    gaps = np.diff(offsets)
    assert (gaps > 0).all() and (chip - gaps >= overlap).all()
    # minimal: one chip fewer could not keep the overlap
    n = len(offsets)
    assert n == 1 or (n - 2) * (chip - overlap) + chip < padded


def test_ramps_cross_fade_to_one_over_each_overlap() -> None:
    offsets = axis_offsets(700, 256, 32)
    weights = np.zeros(offsets[-1] + 256)
    for o, w in zip(offsets, _ramps(offsets, 256), strict=True):
        weights[o : o + 256] += w
    np.testing.assert_allclose(weights, 1.0, atol=2e-3)


@pytest.mark.parametrize(("h", "w"), [(2048, 2048), (6000, 7500), (5000, 5000), (4096, 4096)])
def test_default_overlap_costs_at_most_1_5x_on_scene_sizes(h: int, w: int) -> None:
    plan = plan_tiling(h, w)  # chip 256, overlap 32
    assert plan.cost_ratio <= 1.5, plan


def test_small_scenes_pay_for_the_extra_row_of_chips() -> None:
    # Fixed square chips: a 512 px scene needs 3 chips per axis to overlap at all. Documented.
    assert plan_tiling(512, 512).cost_ratio == pytest.approx(9 / 4)
    assert plan_tiling(200, 100).n_chips == 1


# --- seams ---------------------------------------------------------------------------------------
def test_tiled_prediction_matches_one_pass_including_tile_borders() -> None:
    predictor = tiny_predictor()
    image = make_scene(3, 256).image
    chip = 128
    one_pass = predictor.predict_proba(normalize(image[None]))[0].argmax(0)

    tiled = predict_array(predictor, image, chip_size=chip, overlap=32, batch_size=4)
    plan = plan_tiling(256, 256, chip, 32)
    valid = tiled.valid
    near = border_mask((256, 256), plan.ys, plan.xs, chip) & valid
    overall = (tiled.classes == one_pass)[valid].mean()
    at_borders = (tiled.classes == one_pass)[near].mean()
    print(f"agreement overall {overall:.4%}, within 8 px of tile borders {at_borders:.4%} ({near.sum()} px)")
    assert overall >= 0.995
    assert at_borders >= 0.995

    # The check has teeth: plain non-overlapping tiles leave visible seams.
    plain = predict_array(predictor, image, chip_size=chip, overlap=0)
    plain_plan = plan_tiling(256, 256, chip, 0)
    near0 = border_mask((256, 256), plain_plan.ys, plain_plan.xs, chip) & valid
    assert (plain.classes == one_pass)[near0].mean() < 0.95


def test_context_free_model_is_reproduced_exactly_on_odd_sizes() -> None:
    predictor = LocalPredictor()
    for h, w in [(300, 190), (50, 70), (1, 1), (257, 129)]:
        image = naip_array(max(h, w), seed=h)[:, :h, :w]
        image = np.maximum(image, 1)  # all valid
        predictor.batches.clear()
        pred = predict_array(predictor, image, chip_size=128, overlap=32, batch_size=3)
        assert max(b[0] for b in predictor.batches) <= 3
        assert {b[1:] for b in predictor.batches} == {(4, 128, 128)}
        expected = predictor.predict_proba(normalize(image[None]))[0]
        assert pred.classes.shape == (h, w)
        np.testing.assert_array_equal(pred.classes, expected.argmax(0))
        np.testing.assert_allclose(pred.confidence_float(), expected.max(0), atol=1 / 255)


# --- scenes on disk ------------------------------------------------------------------------------------
def test_predict_scene_keeps_georeference_nodata_and_sums(tmp_path) -> None:
    image = naip_array(300, seed=1, nodata_border=40)
    path = write_naip(tmp_path / "scene.tif", image=image)
    predictor = LocalPredictor()
    pred = predict_scene(predictor, str(path), chip_size=128, overlap=32, batch_size=8)

    with rasterio.open(path) as src:
        assert pred.crs == src.crs and pred.transform == src.transform
        valid = src.dataset_mask() > 0
    np.testing.assert_array_equal(pred.valid, valid)
    assert (pred.classes[~valid] == NODATA_CLASS_ID).all() and (pred.confidence[~valid] == 0).all()
    assert (pred.confidence[valid] >= 255 // 7).all()
    # per-scene sums over valid pixels only, each pixel once
    assert pred.n_valid == valid.sum()
    np.testing.assert_array_equal(pred.class_counts, np.bincount(pred.classes[valid], minlength=7))
    for b in range(4):
        np.testing.assert_array_equal(pred.band_counts[b], np.bincount(image[b][valid], minlength=256))
    probs = predictor.predict_proba(normalize(image[None]))[0]
    top = probs.max(0)[valid]
    assert pred.mean_max_softmax == pytest.approx(top.mean(), rel=1e-4)
    assert pred.low_confidence_count == (top < pred.low_confidence_threshold).sum()
    assert 0.0 <= pred.mean_entropy <= 1.0
    assert pred.valid_area_km2 == pytest.approx(valid.sum() / 1e6)


def test_chips_without_data_are_skipped(tmp_path) -> None:
    image = naip_array(512, seed=2)
    image[:, :300, :] = 0  # the top 300 rows are nodata
    path = write_naip(tmp_path / "half.tif", image=image)
    pred = predict_scene(LocalPredictor(), str(path), chip_size=128, overlap=32)
    assert pred.n_chips_skipped > 0
    assert pred.n_chips + pred.n_chips_skipped == plan_tiling(512, 512, 128, 32).n_chips
    assert (pred.classes[:300] == NODATA_CLASS_ID).all()


def test_bad_scene_raises_validation_error(tmp_path) -> None:
    from tests.data.builders import write_bad_naip

    path = write_bad_naip(tmp_path / "bad.tif", "band_count")
    with pytest.raises(NaipValidationError) as err:
        predict_scene(LocalPredictor(), str(path))
    assert err.value.reason == "band_count"


def _peak_bytes(height: int, width: int) -> int:
    tile = np.maximum(naip_array(64, seed=3), 1)
    image = np.tile(tile, (1, height // 64, width // 64))
    tracemalloc.start()
    try:
        predict_array(LocalPredictor(), image, chip_size=128, overlap=32, batch_size=2)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_a_row_band() -> None:
    # Doubling the height adds only the uint8 outputs (+ the in-memory valid mask), about 4 bytes
    # per pixel; a full-scene C x H x W float32 accumulator would add 7 * 4 + 4 = 32.
    small, tall = _peak_bytes(1024, 1024), _peak_bytes(2048, 1024)
    extra_pixels = 1024 * 1024
    assert tall - small < 8 * extra_pixels, (small, tall)
    assert tall < 0.5 * 7 * 4 * 2048 * 1024


# --- synchronous API -------------------------------------------------------------------------------------
def _geotiff_b64(image: np.ndarray) -> str:
    _, h, w = image.shape
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", height=h, width=w, count=4, dtype="uint8", crs=CRS, transform=TRANSFORM
        ) as dst:
            dst.write(image)
        return base64.b64encode(mem.read()).decode()


def _npy_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array)
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_request_serves_the_seed_shape() -> None:
    predictor = LocalPredictor()
    image = np.maximum(naip_array(100, seed=4), 1)
    expected = predict_array(predictor, image, chip_size=128).classes
    settings = DEFAULTS.model_copy(update={"chip_size": 128})
    bodies = [
        {"image": _geotiff_b64(image)},
        {"image": _npy_b64(image)},
        {"image": _npy_b64(np.moveaxis(image, 0, -1))},  # (H, W, 4)
        {"image": base64.b64encode(image.tobytes()).decode(), "shape": [4, 100, 100]},
    ]
    for body in bodies:
        out = predict_request(predictor, body, settings)
        assert out["shape"] == [100, 100]
        np.testing.assert_array_equal(np.asarray(out["prediction"]), expected)
        assert [c["id"] for c in out["classes"]] == list(range(7))
        assert out["classes"][0]["name"] == "Water" and out["classes"][6]["source_value"] == 15
    resized = predict_request(predictor, {"image": _npy_b64(image), "output_size": [50, 200]}, settings)
    assert resized["shape"] == [50, 200] and np.asarray(resized["prediction"]).shape == (50, 200)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({}, "base64"),
        ({"image": "not base64!!"}, "base64"),
        ({"image": _npy_b64(np.zeros((3, 8, 8), np.uint8))}, "4 bands"),
        ({"image": _npy_b64(np.full((4, 8, 8), np.nan, np.float32))}, "NaN"),
        ({"image": _npy_b64(np.zeros((4, 8, 8), np.uint16) + 300)}, "uint8"),
        ({"image": base64.b64encode(b"garbage bytes").decode()}, "GDAL"),
        ({"image": base64.b64encode(b"\x01" * 10).decode(), "shape": [4, 2, 2]}, "raw bytes"),
        ({"image": _npy_b64(np.ones((4, 8, 8), np.uint8)), "output_size": "big"}, "output_size"),
    ],
)
def test_predict_request_rejects_bad_input(body: dict, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        predict_request(LocalPredictor(), body)


def test_predict_request_size_limit() -> None:
    with pytest.raises(InvalidImageError, match="at most"):
        predict_request(
            LocalPredictor(),
            {"image": _npy_b64(np.ones((4, 64, 64), np.uint8))},
            DEFAULTS.model_copy(update={"max_request_pixels": 1000}),
        )


def _sparse_geotiff_b64(side: int, block: int) -> str:
    """A tiny GeoTIFF that declares a ``side``² 4-band raster but stores no tile (GDAL SPARSE_OK)."""
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            height=side,
            width=side,
            count=4,
            dtype="uint8",
            crs=CRS,
            transform=TRANSFORM,
            tiled=True,
            blockxsize=block,
            blockysize=block,
            SPARSE_OK=True,
        ):
            pass
        return base64.b64encode(mem.read()).decode()


@pytest.mark.parametrize(("side", "block"), [(20_000, 256), (200_000, 4096)])
def test_sync_api_refuses_a_huge_declared_raster_before_reading_it(side: int, block: int) -> None:
    payload = _sparse_geotiff_b64(side, block)
    assert len(payload) < 6 * 1024 * 1024  # fits a Lambda request
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImageError, match="at most"):
            predict_request(LocalPredictor(), {"image": payload})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The header is read, the pixels never: the peak is the payload's own few copies.
    assert peak < 8 * len(payload) + (16 << 20), peak


def _truncated_npy_b64() -> str:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 8, 8), np.uint8))
    return base64.b64encode(buf.getvalue()[:-10]).decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"image": _truncated_npy_b64()}, "npy"),
        ({"image": base64.b64encode(b"\x00" * 64).decode(), "shape": [4, 100_000, 100_000]}, "at most"),
        ({"image": base64.b64encode(b"\x00" * 75).decode(), "shape": [3, 5, 5]}, "4 bands"),
    ],
)
def test_sync_api_checks_declared_shapes_against_the_bytes(body: dict, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        predict_request(LocalPredictor(), body)

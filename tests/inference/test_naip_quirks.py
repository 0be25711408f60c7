"""Real NAIP quirks and what the reader answers: 3-band RGB, 16-bit, 0.6 m pixels, JPEG and
YCbCr-JPEG tiles, nodata 0 against 255 (declared and undeclared)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from core import storage
from core.naip import (
    NAIP_GSD_M,
    NaipBandCountError,
    NaipDtypeError,
    NaipResolutionError,
    describe_raster,
    open_naip,
    validate_naip,
)
from tests.data.builders import CRS, TRANSFORM, naip_array

SIZE = 64


def smooth_image(bands: int = 4, size: int = SIZE) -> np.ndarray:
    """Gradients (JPEG keeps them within a few DN, unlike noise), each band its own level, 20..240."""
    ramp = np.linspace(20, 200, size, dtype=np.float32)
    grid = ramp[None, :] * 0.5 + ramp[:, None] * 0.5
    return np.stack([np.clip(grid + 10 * b, 0, 255) for b in range(bands)]).astype(np.uint8)


def write(path, image: np.ndarray, transform: Affine = TRANSFORM, crs: str = CRS, **profile) -> str:
    count, h, w = image.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=count,
        dtype=image.dtype,
        crs=crs,
        transform=transform,
        **profile,
    ) as dst:
        dst.write(image)
    return storage.to_uri(path)


def test_three_band_rgb_is_quarantined_because_nir_is_required(tmp_path) -> None:
    uri = write(tmp_path / "rgb.tif", naip_array(SIZE)[:3], nodata=0)
    with pytest.raises(NaipBandCountError) as info:
        validate_naip(uri)
    assert info.value.reason == "band_count"
    assert "NIR is required" in info.value.detail and "3 bands" in info.value.detail


def test_other_band_counts_keep_the_general_message(tmp_path) -> None:
    image = np.concatenate([naip_array(SIZE), naip_array(SIZE)[:1]])
    with pytest.raises(NaipBandCountError, match=r"has 5 band\(s\); expected 4"):
        validate_naip(write(tmp_path / "five.tif", image))


@pytest.mark.parametrize("top", [255, 4095])
def test_uint16_is_quarantined_with_the_conversion_to_make(tmp_path, top: int) -> None:
    """No rescale rule is guessed, not even for 16-bit files whose values fit 0..255."""
    image = (naip_array(SIZE).astype(np.int64) * top // 255).astype(np.uint16)
    uri = write(tmp_path / "u16.tif", image, nodata=0)
    with pytest.raises(NaipDtypeError) as info:
        validate_naip(uri)
    detail = info.value.detail
    assert info.value.reason == "dtype"
    assert "uint16" in detail and f"values up to about {top}" in detail
    assert "gdal_translate -ot Byte" in detail


@pytest.mark.parametrize("gsd", [0.6, 0.3, 2.0])
def test_pixels_other_than_1_m_are_quarantined(tmp_path, gsd: float) -> None:
    uri = write(tmp_path / "gsd.tif", naip_array(SIZE), transform=TRANSFORM @ Affine.scale(gsd), nodata=0)
    with pytest.raises(NaipResolutionError) as info:
        validate_naip(uri)
    assert info.value.reason == "resolution"
    assert f"{gsd:.3g} x {gsd:.3g} m pixels" in info.value.detail and "gdalwarp -tr 1 1" in info.value.detail


def test_near_1_m_pixels_pass_and_report_their_size(tmp_path) -> None:
    uri = write(tmp_path / "1m.tif", naip_array(SIZE), transform=TRANSFORM @ Affine.scale(1.02), nodata=0)
    info = validate_naip(uri)
    assert info["gsd_m"] == pytest.approx([1.02, 1.02])
    assert (info["count"], info["dtypes"]) == (4, ["uint8"] * 4)


def test_geographic_crs_pixel_size_is_measured_in_metres(tmp_path) -> None:
    # 1 m at 39° N: about 1.16e-5° of longitude and 9.04e-6° of latitude.
    lat = 39.0
    dx, dy = 1 / (111_320.0 * np.cos(np.radians(lat))), 1 / 110_574.0
    one_m = Affine(dx, 0, -76.0, 0, -dy, lat + SIZE * dy / 2)
    assert validate_naip(write(tmp_path / "geo.tif", naip_array(SIZE), one_m, "EPSG:4326"))["gsd_m"] == (
        pytest.approx([NAIP_GSD_M] * 2, rel=1e-3)
    )
    fine = one_m @ Affine.scale(0.6)
    with pytest.raises(NaipResolutionError):
        validate_naip(write(tmp_path / "geo06.tif", naip_array(SIZE), fine, "EPSG:4326"))


def test_jpeg_compressed_four_band_reads_as_rgbn(tmp_path) -> None:
    image = smooth_image(4)
    uri = write(tmp_path / "jpeg4.tif", image, compress="jpeg", tiled=True, blockxsize=SIZE, blockysize=SIZE)
    info = validate_naip(uri)
    assert info["compression"] == "JPEG"
    with open_naip(uri) as scene:
        pixels = scene.read()
        valid = scene.valid_mask()
    assert pixels.shape == (4, SIZE, SIZE) and pixels.dtype == np.uint8
    # Lossy, but each band stays its own band (no colour-space mix-up): within a few DN.
    assert np.abs(pixels.astype(int) - image).max() <= 4
    assert valid.all()  # no nodata declared: every pixel is data


def test_ycbcr_jpeg_three_band_decodes_to_rgb_and_is_quarantined_for_nir(tmp_path) -> None:
    image = smooth_image(3)
    uri = write(
        tmp_path / "ycbcr.tif",
        image,
        compress="jpeg",
        photometric="ycbcr",
        tiled=True,
        blockxsize=SIZE,
        blockysize=SIZE,
    )
    header = describe_raster(uri)
    assert header is not None and header["photometric"] == "ycbcr" and header["count"] == 3
    with rasterio.open(storage.local_path(uri)) as ds:
        decoded = ds.read()
    # GDAL hands back R, G, B, not Y, Cb, Cr (Cb/Cr of this image would sit near 128).
    assert np.abs(decoded.astype(int) - image).max() <= 4
    with pytest.raises(NaipBandCountError, match="NIR is required"):
        validate_naip(uri)


@pytest.mark.parametrize("value", [0, 255])
def test_declared_nodata_masks_pixels_where_every_band_holds_it(tmp_path, value: int) -> None:
    image = naip_array(SIZE, seed=4)
    image[image == value] = 128  # only the pixels set below hold the value
    image[:, :8, :] = value  # every band: nodata
    image[0, 20, :] = value  # red only: still data
    other = 255 - value
    image[:, 30, :] = other  # every band at the other value: data
    uri = write(tmp_path / f"nd{value}.tif", image, nodata=value)
    with open_naip(uri) as scene:
        valid = scene.valid_mask()
    assert not valid[:8].any()
    assert valid[8:].all()
    assert validate_naip(uri)["nodata"] == value


@pytest.mark.parametrize("value", [0, 255])
def test_undeclared_nodata_means_every_pixel_is_data(tmp_path, value: int) -> None:
    """No declared value: 0 and 255 fills are data (declare them with `gdal_edit.py -a_nodata`)."""
    image = naip_array(SIZE, seed=5)
    image[:, :8, :] = value
    uri = write(tmp_path / f"undeclared{value}.tif", image, photometric="minisblack")
    with open_naip(uri) as scene:
        assert scene.nodata is None
        assert scene.valid_mask().all()


def test_undeclared_nodata_with_nir_tagged_alpha_is_still_all_data(tmp_path) -> None:
    """GDAL's default for a 4-band uint8 TIFF tags NIR as alpha; NIR = 0 must not become nodata."""
    image = naip_array(SIZE, seed=6)
    image[3, :8, :] = 0
    uri = write(tmp_path / "alpha.tif", image)  # rasterio/GDAL default: RGB + alpha
    with rasterio.open(storage.local_path(uri)) as ds:
        assert ds.colorinterp[3].name == "alpha"
    with open_naip(uri) as scene:
        assert scene.valid_mask().all()


def test_describe_raster_reads_headers_of_invalid_files(tmp_path) -> None:
    uri = write(tmp_path / "u16.tif", naip_array(SIZE).astype(np.uint16))
    header = describe_raster(uri)
    assert header is not None
    assert (header["width"], header["height"], header["count"], header["dtypes"][0]) == (
        SIZE,
        SIZE,
        4,
        "uint16",
    )
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"not a tiff")
    assert describe_raster(storage.to_uri(bad)) is None

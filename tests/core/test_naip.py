"""NAIP reader: good scenes, every bad-input class, normalisation and an S3 round trip."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from core import naip, storage
from core.naip import (
    REASON_CODES,
    NaipAllNodataError,
    NaipBandCountError,
    NaipDtypeError,
    NaipEmptyError,
    NaipMissingCrsError,
    NaipResolutionError,
    NaipTooLargeError,
    NaipUnreadableError,
    NaipValidationError,
    normalize,
    open_naip,
    validate_naip,
)
from tests.data.builders import (
    BAD_KINDS,
    naip_array,
    too_large_limit,
    write_bad_naip,
    write_naip,
    write_uint16_naip,
)

EXPECTED = {
    "unreadable": NaipUnreadableError,
    "empty": NaipEmptyError,
    "band_count": NaipBandCountError,
    "dtype": NaipDtypeError,
    "missing_crs": NaipMissingCrsError,
    "resolution": NaipResolutionError,
    "all_nodata": NaipAllNodataError,
    "too_large": NaipTooLargeError,
}


def test_reason_codes_cover_every_class():
    assert set(REASON_CODES) == set(EXPECTED) == set(BAD_KINDS)
    for code, cls in REASON_CODES.items():
        assert cls.reason == code
        assert issubclass(cls, NaipValidationError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_bad_input_raises_its_own_error(tmp_path, kind):
    path = write_bad_naip(tmp_path / f"{kind}.tif", kind)
    with pytest.raises(EXPECTED[kind]) as info:
        open_naip(str(path))
    err = info.value
    assert err.reason == kind
    assert str(path) in str(err)  # the message names the file
    # No other validation class matches: each case is distinguishable by type.
    others = tuple(c for k, c in EXPECTED.items() if k != kind)
    assert not isinstance(err, others)


def test_messages_say_expected_and_found(tmp_path):
    with pytest.raises(NaipBandCountError, match=r"has 3 bands \(RGB, no near-infrared\).*NIR is required"):
        open_naip(str(write_bad_naip(tmp_path / "a.tif", "band_count")))
    with pytest.raises(NaipDtypeError, match="float32 and contains NaN"):
        open_naip(str(write_bad_naip(tmp_path / "b.tif", "dtype")))
    with pytest.raises(NaipDtypeError, match=r"uint16.*expected uint8"):
        open_naip(str(write_uint16_naip(tmp_path / "c.tif")))
    small = write_naip(tmp_path / "d.tif", size=32)
    with pytest.raises(NaipTooLargeError, match="exceeds the limit of 1,023"):
        open_naip(str(small), max_pixels=too_large_limit(32))


def test_missing_file_is_not_a_validation_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_naip(str(tmp_path / "nope.tif"))


def test_good_scene_metadata_reads_and_mask(tmp_path):
    image = naip_array(64, nodata_border=8)
    path = write_naip(tmp_path / "ok.tif", image=image)
    for uri in (str(path), storage.to_uri(path)):
        with open_naip(uri) as scene:
            assert scene.shape == (64, 64)
            assert scene.crs.to_epsg() == 32618
            assert scene.transform.a == 1.0
            assert scene.nodata == 0
            assert scene.bounds.left == 400_000.0
            np.testing.assert_array_equal(scene.read(), image)
            win = Window(4, 10, 16, 12)  # col, row, width, height
            np.testing.assert_array_equal(scene.read(window=win), image[:, 10:22, 4:20])
            mask = scene.valid_mask()
            assert mask.dtype == bool and mask.shape == (64, 64)
            assert not mask[:8].any() and not mask[:, :8].any() and mask[8:, 8:].all()
            assert scene.valid_mask(window=win).shape == (12, 16)
    meta = validate_naip(str(path))
    assert meta["width"] == 64 and meta["crs"] == "EPSG:32618"


def test_normalize_uses_clay_constants():
    chips = np.stack([np.full((2, 3), v, dtype=np.uint8) for v in (110, 115, 98, 139)])[None]  # (1, 4, 2, 3)
    out = normalize(chips)
    assert out.dtype == np.float32 and out.shape == (1, 4, 2, 3)
    expected = [
        (v - m) / s for v, m, s in zip((110, 115, 98, 139), naip.NAIP_MEANS, naip.NAIP_STDS, strict=True)
    ]
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, H, W\]"):
        normalize(np.zeros((3, 8, 8), dtype=np.uint8))


def test_constants_match_design():
    assert naip.NAIP_BANDS == ("red", "green", "blue", "nir")
    assert naip.NAIP_WAVELENGTHS_UM == (0.65, 0.56, 0.48, 0.842)
    assert naip.NAIP_GSD_M == 1.0


def test_s3_round_trip_with_windowed_read(tmp_path, s3_bucket):
    image = naip_array(300, seed=3, nodata_border=5)
    path = write_naip(tmp_path / "scene_naip-new.tif", image=image)
    uri = f"{s3_bucket}/incoming/scene_naip-new.tif"
    storage.upload(path, uri)
    with open_naip(uri) as scene:
        assert scene.shape == (300, 300)
        assert scene.crs.to_epsg() == 32618
        win = Window(256, 256, 44, 44)  # crosses into the second tile row/column
        np.testing.assert_array_equal(scene.read(window=win), image[:, 256:300, 256:300])
        np.testing.assert_array_equal(scene.read(), image)
        assert scene.valid_mask()[5:, 5:].all() and not scene.valid_mask()[:5].any()


def test_s3_bad_inputs_raise_the_same_errors(tmp_path, s3_bucket):
    for kind in ("unreadable", "empty", "band_count", "all_nodata"):
        path = write_bad_naip(tmp_path / f"{kind}.tif", kind)
        uri = f"{s3_bucket}/bad/{kind}.tif"
        storage.upload(path, uri)
        with pytest.raises(EXPECTED[kind]) as info:
            open_naip(uri)
        assert info.value.uri == uri


def test_nodata_mask_never_comes_from_a_band_tagged_alpha(tmp_path) -> None:
    """Some NAIP files tag NIR as alpha; GDAL would then drop every NIR = 0 pixel as nodata."""
    import rasterio
    from rasterio.enums import ColorInterp

    image = naip_array(32, seed=3)
    image[3, :8, :] = 0  # NIR = 0 (water at night, saturation, ...): still data
    image[:, -4:, :] = 0  # all bands 0: nodata
    path = write_naip(tmp_path / "alpha.tif", image=image)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with rasterio.open(path) as ds:
        assert ColorInterp.alpha in ds.colorinterp
        assert not (ds.dataset_mask()[:8] > 0).any()  # what GDAL alone would say
    with open_naip(storage.to_uri(path)) as scene:
        valid = scene.valid_mask()
    assert valid[:8].all() and not valid[-4:].any()
    assert valid.sum() == 28 * 32

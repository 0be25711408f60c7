"""The synthetic scene generator: determinism, plausible spectra, layout, idempotence, S3."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio

from core import storage
from training.data.chesapeake import find_scenes, read_label
from core.naip import open_naip
from training.data.synthetic import (
    BARREN,
    IMPERVIOUS,
    LOWVEG,
    NODATA,
    ROAD,
    TREE,
    WATER,
    generate_dataset,
    generate_scene,
    main,
    scene_seed,
)


def test_same_seed_is_byte_identical_and_different_seeds_differ():
    a_img, a_lc = generate_scene(11, 256)
    b_img, b_lc = generate_scene(11, 256)
    assert a_img.tobytes() == b_img.tobytes() and a_lc.tobytes() == b_lc.tobytes()
    c_img, c_lc = generate_scene(12, 256)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lc, c_lc)
    assert a_img.shape == (4, 256, 256) and a_img.dtype == np.uint8
    assert a_lc.shape == (256, 256) and a_lc.dtype == np.uint8
    wide_img, wide_lc = generate_scene(1, (128, 320))
    assert wide_img.shape == (4, 128, 320) and wide_lc.shape == (128, 320)


@pytest.fixture(scope="module")
def scene():
    return generate_scene(3, 512)


def test_labels_and_nodata(scene):
    image, lc = scene
    values = set(np.unique(lc).tolist())
    assert values <= {WATER, TREE, LOWVEG, BARREN, IMPERVIOUS, ROAD, NODATA}
    assert {TREE, LOWVEG, NODATA} <= values and len(values) >= 5
    nodata = lc == NODATA
    assert 0 < nodata.mean() < 0.2
    assert (image[:, nodata] == 0).all()
    assert image[:, ~nodata].any(axis=0).all()  # valid pixels are never all-zero


def test_spectra_are_plausible():
    image, lc = generate_scene(5, 1024)
    mean = {v: image[:, lc == v].astype(float).mean(axis=1) for v in np.unique(lc) if v != NODATA}
    red, green, nir = 0, 1, 3
    assert mean[WATER][nir] < 60 and mean[WATER][nir] < mean[WATER][green]  # water absorbs NIR
    for veg in (TREE, LOWVEG):
        assert mean[veg][nir] > 1.5 * mean[veg][red]  # vegetation reflects NIR
        assert mean[veg][nir] > 2 * mean[WATER][nir]
    assert mean[TREE][:3].sum() < mean[LOWVEG][:3].sum()  # canopy is darker than grass
    for grey in (IMPERVIOUS, ROAD):
        if grey in mean:
            assert abs(mean[grey][nir] - mean[grey][:3].mean()) < 0.2 * mean[grey][:3].mean()
    if BARREN in mean:
        assert mean[BARREN][red] > mean[BARREN][2] and mean[BARREN][:3].mean() > mean[LOWVEG][:3].mean()


def test_classes_are_separable_but_not_trivially(scene):
    # A nearest-class-mean classifier on single pixels beats the majority class clearly but is
    # not perfect: the signal is learnable, and texture/context still matter.
    image, lc = scene
    valid = lc != NODATA
    x = image[:, valid].T.astype(float)
    y = lc[valid]
    classes = np.unique(y)
    centroids = np.stack([x[y == c].mean(axis=0) for c in classes])
    pred = classes[np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    accuracy = (pred == y).mean()
    majority = np.bincount(y).max() / y.size
    assert accuracy > majority + 0.1
    assert accuracy < 0.99


def test_scene_seeds_differ_per_split():
    seeds = {scene_seed(0, split, i) for split in ("train", "val", "test") for i in range(5)}
    assert len(seeds) == 15


def test_generate_dataset_layout_and_idempotence(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.data.synthetic")
    records = generate_dataset(str(tmp_path), scenes_per_split=1, size=256, seed=0, workers=1)
    assert [r.split for r in records] == ["train", "val", "test"]
    out = caplog.text
    assert out.count("wrote") == 3
    assert [r.scene_id for r in find_scenes(str(tmp_path))] == [r.scene_id for r in records]

    with rasterio.open(tmp_path / "train" / "synth-train-000_naip-new.tif") as ds:
        assert ds.count == 4 and ds.dtypes == ("uint8",) * 4 and ds.nodata == 0
        assert ds.crs.to_epsg() == 32618 and ds.res == (1.0, 1.0)
        assert ds.block_shapes[0] == (256, 256) and ds.compression.name.lower() == "deflate"
        assert ds.descriptions == ("red", "green", "blue", "nir")
        assert ds.colorinterp[3].name == "undefined"  # NIR is not alpha
    with rasterio.open(tmp_path / "train" / "synth-train-000_lc.tif") as ds:
        assert ds.colormap(1)[1][:3] == (0, 112, 255)
    train = find_scenes(str(tmp_path), "train")[0]
    with open_naip(train.image_uri) as scene:
        assert scene.shape == (256, 256)
    assert read_label(train.label_uri).max() <= 6

    mtime = (tmp_path / "val" / "synth-val-000_naip-new.tif").stat().st_mtime_ns
    caplog.clear()
    generate_dataset(str(tmp_path), scenes_per_split=1, size=256, seed=0, workers=1)
    assert caplog.text.count("skip") == 3
    assert (tmp_path / "val" / "synth-val-000_naip-new.tif").stat().st_mtime_ns == mtime


def test_cli_writes_to_s3(s3_bucket, capsys):
    assert (
        main(
            ["--root", f"{s3_bucket}/synthetic", "--size", "128", "--scenes-per-split", "1", "--workers", "1"]
        )
        == 0
    )
    uris = storage.list_uris(f"{s3_bucket}/synthetic", suffix=".tif")
    assert len(uris) == 6
    scenes = find_scenes(f"{s3_bucket}/synthetic", "test")
    with open_naip(scenes[0].image_uri) as scene:
        assert scene.shape == (128, 128)

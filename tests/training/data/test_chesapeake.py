"""The CVPR layout loader, for the release's folder names and our synthetic ones."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.builders import write_lc, write_naip, write_scene_pair
from core import storage
from training.data.chesapeake import (
    DatasetNotFoundError,
    MissingLabelError,
    find_scenes,
    read_label,
    split_of_folder,
)
from core.classes import UnknownLabelValueError


def test_split_of_folder():
    assert split_of_folder("train") == "train"
    assert split_of_folder("de_1m_2013_extended-debuffered-val_tiles") == "val"
    assert split_of_folder("ny_1m_2013_extended-debuffered-test_tiles") == "test"
    assert split_of_folder("training") is None
    assert split_of_folder("de_1m_2013_extended-debuffered-train_tiles_old") is None


def test_release_layout(tmp_path):
    for state in ("de", "md"):
        for split in ("train", "val", "test"):
            folder = tmp_path / f"{state}_1m_2013_extended-debuffered-{split}_tiles"
            write_scene_pair(folder, f"m_{state}_{split}_01", size=32)
            # Other layers of the release sit beside them and must be ignored.
            write_naip(folder / f"m_{state}_{split}_01_naip-old.tif", size=16)
    (tmp_path / "spatial_index.geojson").write_text("{}")
    scenes = find_scenes(str(tmp_path))
    assert [s.split for s in scenes] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    val = find_scenes(storage.to_uri(tmp_path), split="val")
    assert {s.scene_id for s in val} == {"m_de_val_01", "m_md_val_01"}
    for s in val:
        assert s.image_uri.endswith("_naip-new.tif") and s.label_uri.endswith("_lc.tif")
        assert s.image_uri.startswith("file://")


def test_synthetic_layout_and_label_remap(tmp_path):
    write_scene_pair(tmp_path / "train", "synth-train-000", size=64, seed=1)
    write_scene_pair(tmp_path / "test", "synth-test-000", size=64, seed=2)
    (scene,) = find_scenes(str(tmp_path), split="test")
    assert scene.scene_id == "synth-test-000"
    labels = read_label(scene.label_uri)
    assert labels.dtype == np.uint8 and labels.shape == (64, 64)
    assert labels.max() <= 6


def test_errors_name_the_root_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="make synthetic_data") as info:
        find_scenes(str(tmp_path / "empty"))
    assert "empty" in str(info.value) and "make download_data" in str(info.value)
    write_scene_pair(tmp_path / "train", "a", size=32)
    with pytest.raises(DatasetNotFoundError, match="split 'val'"):
        find_scenes(str(tmp_path), split="val")
    with pytest.raises(ValueError, match="unknown split"):
        find_scenes(str(tmp_path), split="validation")


def test_image_without_label_is_an_error(tmp_path):
    write_naip(tmp_path / "train" / "lonely_naip-new.tif", size=16)
    with pytest.raises(MissingLabelError, match=r"lonely_lc\.tif"):
        find_scenes(str(tmp_path))


def test_unknown_label_value_names_the_file(tmp_path):
    path = write_lc(tmp_path / "x_lc.tif", np.full((16, 16), 9, dtype=np.uint8))
    with pytest.raises(UnknownLabelValueError, match=r"x_lc\.tif"):
        read_label(str(path))


def test_layout_on_s3(tmp_path, s3_bucket):
    image, label = write_scene_pair(tmp_path, "s3scene", size=32)
    storage.upload(image, f"{s3_bucket}/cvpr/va_1m_2014_extended-debuffered-train_tiles/{image.name}")
    storage.upload(label, f"{s3_bucket}/cvpr/va_1m_2014_extended-debuffered-train_tiles/{label.name}")
    (scene,) = find_scenes(f"{s3_bucket}/cvpr")
    assert scene.split == "train" and scene.image_uri.startswith("s3://")
    assert read_label(scene.label_uri).shape == (32, 32)


def test_release_folder_names_follow_the_release():
    from training.data.chesapeake import RELEASE_YEARS, release_folder

    assert release_folder("va", "train") == "va_1m_2014_extended-debuffered-train_tiles"
    assert release_folder("wv", "test") == "wv_1m_2014_extended-debuffered-test_tiles"
    assert release_folder("ny", "val") == "ny_1m_2013_extended-debuffered-val_tiles"
    assert set(RELEASE_YEARS) == {"de", "md", "va", "wv", "pa", "ny"}
    for state in RELEASE_YEARS:
        for split in ("train", "val", "test"):
            assert split_of_folder(release_folder(state, split)) == split
    with pytest.raises(ValueError, match="unknown state"):
        release_folder("ca", "train")


def test_label_value_zero_is_no_data_and_counted(tmp_path):
    from training.data.chesapeake import label_nodata_counts

    raw = np.full((32, 32), 2, dtype=np.uint8)
    raw[:4] = 0  # unlabelled rows, as on the release's tile edges
    raw[-2:] = 15
    path = write_lc(tmp_path / "edge_lc.tif", raw)
    labels = read_label(str(path))
    assert (labels[:4] == 6).all() and (labels[-2:] == 6).all() and (labels[4:-2] == 1).all()
    assert label_nodata_counts(str(path)) == {"0": 4 * 32, "15": 2 * 32, "pixels": 32 * 32}

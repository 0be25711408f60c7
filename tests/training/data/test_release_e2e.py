"""The real release's layout end to end: a miniature of cvpr_chesapeake_landcover.zip, fetched
from a file:// URL and extracted by the real download code, then trained on (validate_data, cache_features and
train_head with 1 epoch; the later steps are the same code as on synthetic data).

The miniature has every state's folders under their release names (2013 for de/md/ny/pa, 2014
for va/wv), one tiny tile per folder with ``naip-new`` and ``lc`` plus the layers the loader
ignores (``naip-old``, ``nlcd``, ``landsat-leaf-on/off``, ``buildings``,
``prior_from_cooccurrences_101_31_no_osm_no_buildings``), ``spatial_index.geojson``, and ``lc``
rasters whose edges are 0 (unlabelled), as in the release.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.data.builders import write_lc, write_naip
from tests.training.pipeline_fixtures import TINY_OVERRIDES
from training import pipeline
from core.config import compose
from training.data.chesapeake import IGNORED_LAYERS, RELEASE_YEARS, find_scenes, release_folder
from training.data.download import DONE_MARKER, FILENAME, download_chesapeake
from training.data.synthetic import generate_scene

TILE = 64
ZERO_ROWS = 3  # unlabelled rows at the top of every lc tile


def build_release_zip(path: Path, work: Path) -> Path:
    """Write the miniature release zip at ``path`` (members at the zip root, like the release)."""
    seed = 0
    for state in RELEASE_YEARS:
        for split in ("train", "val", "test"):
            folder = work / release_folder(state, split)
            tile = f"m_{seed:07d}_ne_18_1"
            image, lc = generate_scene(seed, TILE)
            lc = np.ascontiguousarray(lc[:TILE, :TILE]).copy()
            lc[:ZERO_ROWS] = 0
            write_naip(folder / f"{tile}_naip-new.tif", image=np.ascontiguousarray(image[:, :TILE, :TILE]))
            write_lc(folder / f"{tile}_lc.tif", lc)
            for layer in IGNORED_LAYERS:
                write_naip(folder / f"{tile}_{layer}.tif", size=16, seed=seed)
            seed += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    (work / "spatial_index.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in sorted(work.rglob("*")):
            if member.is_file():
                zf.write(member, member.relative_to(work).as_posix())
    return path


@pytest.mark.slow
def test_miniature_release_downloads_extracts_and_trains(tmp_path, monkeypatch) -> None:
    archive = build_release_zip(tmp_path / "mirror" / FILENAME, tmp_path / "build")
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = download_chesapeake(
        tmp_path / "chesapeake", urls=[archive.as_uri()], expected_sha256=sha256, progress=False
    )
    assert (dest / DONE_MARKER).exists() and (dest / FILENAME).read_bytes() == archive.read_bytes()
    folders = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert folders == sorted(release_folder(s, sp) for s in RELEASE_YEARS for sp in ("train", "val", "test"))

    scenes = find_scenes(str(dest))
    assert len(scenes) == 18 and all(s.image_uri.endswith("_naip-new.tif") for s in scenes)
    assert {s.image_uri.rsplit("/", 2)[-2][:10] for s in scenes} >= {"va_1m_2014", "wv_1m_2014"}

    monkeypatch.setenv("LANDCOVER_HOME", str(tmp_path / "home"))
    cfg = compose(["data=chesapeake", f"data.root_uri={dest.as_uri()}", *TINY_OVERRIDES, "training.epochs=1"])
    run = pipeline.start_run(cfg, "mini-release")
    for step in ("validate_data", "cache_features", "train_head"):  # what training needs
        getattr(pipeline, step)(run)

    validated = run.result("validate_data")
    assert {split: len(ids) for split, ids in validated["scenes"].items()} == {
        "train": 6,
        "val": 6,
        "test": 6,
    }
    nodata = validated["label_nodata_pixels"]
    for split in ("train", "val", "test"):
        assert nodata[split]["0"] == 6 * ZERO_ROWS * TILE  # counted, and no tile was refused
        assert nodata[split]["pixels"] == 6 * TILE * TILE
    chips = run.result("cache_features")["chips"]
    assert chips["train"] == 6 * cfg.training.chips_per_scene and chips["test"] > 0  # per training tile
    trained = run.result("train_head")
    assert trained["device"]["device"] in ("cpu", "cuda") and 0.0 <= trained["val_miou"] <= 1.0

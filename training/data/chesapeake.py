"""The Chesapeake CVPR 2019 layout: find image/label pairs per split and read labels as ids 0..6.

Two folder styles are supported, because the real release and our synthetic data differ:

* the release: ``<root>/<state>_1m_<year>_extended-debuffered-{train,val,test}_tiles/<tile>_naip-new.tif``
  next to ``<tile>_lc.tif``, where the year is 2013 for de, md, ny and pa and 2014 for va and
  wv (:data:`RELEASE_YEARS`, :func:`release_folder`). The other layers beside them
  (``naip-old``, ``nlcd``, ``landsat-leaf-on``/``-off``, ``buildings``,
  ``prior_from_cooccurrences_101_31_no_osm_no_buildings``) and ``spatial_index.geojson`` are ignored;
* synthetic data (``make synthetic_data``): ``<root>/{train,val,test}/<scene>_naip-new.tif``.

A scene belongs to a split when its parent folder is named after the split or ends with
``-{split}_tiles``. :func:`find_scenes` can keep some states of the release and cap a split's
scenes by count or by km² (``data.states``, ``data.max_scenes``, ``data.max_km2``, read by
:func:`scenes_from_config`). In ``lc`` rasters both 15 and 0 mean No Data (see
:mod:`core.classes`); :func:`label_nodata_counts` counts them for the validation report.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window

from core import storage
from core.classes import EXTRA_NODATA_SOURCE_VALUES, NODATA_SOURCE_VALUE, remap_lc
from core.naip import open_raster, pixel_size_m

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIX = "_naip-new.tif"
LABEL_SUFFIX = "_lc.tif"
#: NAIP year of each state's folders in the CVPR 2019 release.
RELEASE_YEARS: dict[str, int] = {"de": 2013, "md": 2013, "ny": 2013, "pa": 2013, "va": 2014, "wv": 2014}
#: Layers of a release tile that the loader ignores (it reads ``naip-new`` and ``lc`` only).
IGNORED_LAYERS: tuple[str, ...] = (
    "naip-old",
    "nlcd",
    "landsat-leaf-on",
    "landsat-leaf-off",
    "buildings",
    "prior_from_cooccurrences_101_31_no_osm_no_buildings",
)


#: A release folder's name starts with its state: ``<state>_1m_<year>_...``.
_STATE_FOLDER = re.compile(r"^([a-z]{2})_1m_\d{4}_")


def release_folder(state: str, split: str) -> str:
    """The release's folder of one state and split, e.g. ``va_1m_2014_extended-debuffered-train_tiles``."""
    if state not in RELEASE_YEARS:
        raise ValueError(f"unknown state {state!r}; the release has {', '.join(RELEASE_YEARS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return f"{state}_1m_{RELEASE_YEARS[state]}_extended-debuffered-{split}_tiles"


class DatasetNotFoundError(FileNotFoundError):
    """No scenes were found under a dataset root."""


class MissingLabelError(FileNotFoundError):
    """An image has no ``*_lc.tif`` label next to it."""


@dataclass(frozen=True)
class SceneRecord:
    """One image/label pair. ``scene_id`` is the tile name without the layer suffix."""

    scene_id: str
    image_uri: str
    label_uri: str
    split: str

    def to_dict(self) -> dict[str, str]:
        return {
            "scene_id": self.scene_id,
            "image_uri": self.image_uri,
            "label_uri": self.label_uri,
            "split": self.split,
        }


def split_of_folder(folder: str) -> str | None:
    """The split a folder name stands for (``train``/``val``/``test``), or None."""
    for split in SPLITS:
        if folder == split or folder.endswith(f"-{split}_tiles"):
            return split
    return None


def state_of_folder(folder: str) -> str | None:
    """The release state a folder holds (``de`` for ``de_1m_2013_...``), or None (synthetic layout)."""
    match = _STATE_FOLDER.match(folder)
    return match.group(1) if match else None


def state_of(record: SceneRecord) -> str | None:
    """The release state of a scene, from its folder."""
    return state_of_folder(record.image_uri.rsplit("/", 2)[-2])


def check_states(states: Iterable[str] | None) -> tuple[str, ...] | None:
    """States as sorted lower-case codes, each one the release has; None keeps every state.

    Raises:
        ValueError: a state the release does not have, or an empty list.
    """
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    codes = sorted({str(s).strip().lower() for s in states})
    if not codes:
        raise ValueError("data.states is an empty list; use null for every state or name some of them")
    unknown = [s for s in codes if s not in RELEASE_YEARS]
    if unknown:
        raise ValueError(
            f"unknown state(s) {', '.join(map(repr, unknown))}; the release has {', '.join(RELEASE_YEARS)}"
        )
    return tuple(codes)


def scene_km2(record: SceneRecord) -> float:
    """Ground area of a scene's image in km², from its header."""
    with ExitStack() as stack:
        ds = open_raster(record.image_uri, stack)
        if ds.crs is None:
            raise ValueError(f"{record.image_uri} has no CRS, so its area (for data.max_km2) is unknown")
        x, y = pixel_size_m(ds)
        return int(ds.width) * int(ds.height) * x * y / 1e6


def find_scenes(
    root_uri: str,
    split: str | None = None,
    states: Iterable[str] | None = None,
    max_scenes: int | None = None,
    max_km2: float | None = None,
) -> list[SceneRecord]:
    """All scenes under ``root_uri`` (optionally of one split), sorted by split then URI.

    Args:
        states: keep only the release folders of these states (None: all; the synthetic layout
            has no states, so naming any finds none of its scenes).
        max_scenes: at most this many scenes (None: no cap).
        max_km2: at most this much ground area in km² (None: no cap); reads image headers.

    With a cap the scenes are taken in a fixed order, one from each state in turn (states
    sorted, each state's scenes by URI), until the next one would pass a cap; the result is
    then sorted like an uncapped one. The same files give the same selection every time.

    Raises:
        ValueError: ``split`` is not one of train/val/test, an unknown state, a cap that is not
            positive, or a ``max_km2`` smaller than the first scene.
        DatasetNotFoundError: nothing matched, naming the root and how to get data.
        MissingLabelError: an image has no matching label file.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    wanted = check_states(states)
    if max_scenes is not None and (
        isinstance(max_scenes, bool) or int(max_scenes) != max_scenes or max_scenes < 1
    ):
        raise ValueError(f"data.max_scenes must be a positive integer or null, got {max_scenes!r}")
    if max_km2 is not None and not float(max_km2) > 0:
        raise ValueError(f"data.max_km2 must be a positive number of km² or null, got {max_km2!r}")
    root = storage.to_uri(root_uri)
    uris = storage.list_uris(root, suffix=".tif")
    present = set(uris)
    records: list[SceneRecord] = []
    for uri in uris:
        if not uri.endswith(IMAGE_SUFFIX):
            continue
        parent = uri.rsplit("/", 2)[-2] if uri.count("/") >= 2 else ""
        scene_split = split_of_folder(parent)
        if scene_split is None or (split is not None and scene_split != split):
            continue
        label_uri = uri[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX
        if label_uri not in present:
            raise MissingLabelError(
                f"image {uri} has no label; expected {label_uri} next to it "
                "(every *_naip-new.tif needs its *_lc.tif)"
            )
        scene_id = uri.rsplit("/", 1)[-1][: -len(IMAGE_SUFFIX)]
        records.append(SceneRecord(scene_id, uri, label_uri, scene_split))
    if not records:
        which = f" for split {split!r}" if split else ""
        raise DatasetNotFoundError(
            f"no Chesapeake scenes{which} under {root}: expected <split>/<id>_naip-new.tif with <id>_lc.tif "
            "(split folders named train/val/test or *-{train,val,test}_tiles). "
            "Run `make synthetic_data` to generate synthetic scenes, or `make download_data` for the "
            "real CVPR 2019 release, or point the data root at an existing copy."
        )
    order = {s: i for i, s in enumerate(SPLITS)}
    records.sort(key=lambda r: (order[r.split], r.image_uri))
    if wanted is not None:
        found = sorted({state_of(r) or "none (synthetic layout)" for r in records})
        records = [r for r in records if state_of(r) in wanted]
        if not records:
            raise DatasetNotFoundError(
                f"no Chesapeake scenes of state(s) {', '.join(wanted)} under {root}"
                f"{f' for split {split!r}' if split else ''}; the scenes there are of: {', '.join(found)}"
            )
    if max_scenes is None and max_km2 is None:
        return records
    chosen = _capped(records, max_scenes, max_km2)
    return sorted(chosen, key=lambda r: (order[r.split], r.image_uri))


def _capped(records: list[SceneRecord], max_scenes: int | None, max_km2: float | None) -> list[SceneRecord]:
    """A prefix of ``records`` taken one state at a time, within both caps."""
    by_state: dict[str, list[SceneRecord]] = {}
    for r in sorted(records, key=lambda r: r.image_uri):
        by_state.setdefault(state_of(r) or "", []).append(r)
    turns = itertools.zip_longest(*(by_state[s] for s in sorted(by_state)))
    chosen: list[SceneRecord] = []
    km2 = 0.0
    for record in (r for turn in turns for r in turn if r is not None):
        if max_scenes is not None and len(chosen) >= max_scenes:
            break
        if max_km2 is not None:
            area = scene_km2(record)
            if km2 + area > max_km2:
                if not chosen:
                    raise ValueError(
                        f"data.max_km2 = {max_km2:g} km² is smaller than the first scene, "
                        f"{record.image_uri} ({area:.3f} km²)"
                    )
                break
            km2 += area
        chosen.append(record)
    return chosen


def scenes_from_config(data_cfg: Any, split: str) -> list[SceneRecord]:
    """The scenes of ``split`` (train/val/test) the ``data`` config selects: its ``root_uri``, the
    folder name ``splits[split]`` and the optional ``states``, ``max_scenes`` and ``max_km2``
    (caps per split)."""
    return find_scenes(
        data_cfg.root_uri,
        data_cfg.splits[split],
        states=data_cfg.get("states"),
        max_scenes=data_cfg.get("max_scenes"),
        max_km2=data_cfg.get("max_km2"),
    )


def read_label(uri: str, window: Window | None = None) -> np.ndarray:
    """Read an ``lc`` raster (or a window of it) remapped to model ids 0..6, uint8 ``(h, w)``.

    Raises:
        UnknownLabelValueError: the raster holds values outside the Chesapeake table.
    """
    with ExitStack() as stack:
        ds = open_raster(uri, stack)
        raw = ds.read(1, window=window)
    try:
        return remap_lc(raw)
    except ValueError as exc:
        raise type(exc)(f"{uri}: {exc}") from exc


def label_shape(uri: str) -> tuple[int, int]:
    """``(height, width)`` of a label raster, read from its header only."""
    with ExitStack() as stack:
        ds = open_raster(uri, stack)
        return (int(ds.height), int(ds.width))


def label_nodata_counts(uri: str) -> dict[str, int]:
    """Pixels of an ``lc`` raster per raw No Data value, plus the total: ``{"0": n, "15": n, "pixels": n}``.

    Both values become class 6 (No Data) when read; the counts go into the validation report so
    a tile that is mostly unlabelled is visible rather than refused.
    """
    with ExitStack() as stack:
        ds = open_raster(uri, stack)
        counts = {str(v): 0 for v in (*EXTRA_NODATA_SOURCE_VALUES, NODATA_SOURCE_VALUE)}
        for _, window in ds.block_windows(1):
            raw = ds.read(1, window=window)
            for value in counts:
                counts[value] += int(np.count_nonzero(raw == int(value)))
        counts["pixels"] = int(ds.height) * int(ds.width)
    return counts

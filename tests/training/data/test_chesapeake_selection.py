"""Choosing release states and capping scenes or km² (data.states, data.max_scenes, data.max_km2)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from core.config import compose
from tests.data.builders import write_scene_pair
from training.data.chesapeake import (
    DatasetNotFoundError,
    find_scenes,
    release_folder,
    scene_km2,
    scenes_from_config,
    state_of,
)

SIDE = 32  # px at 1 m: each scene is 0.001024 km²
KM2 = SIDE * SIDE / 1e6


@pytest.fixture
def release(tmp_path):
    """de: 3 train tiles, md: 2, va: 1 (and one val tile each), in the release's folder names."""
    for state, n in (("de", 3), ("md", 2), ("va", 1)):
        for i in range(n):
            write_scene_pair(tmp_path / release_folder(state, "train"), f"m_{state}_{i:02d}", size=SIDE)
        write_scene_pair(tmp_path / release_folder(state, "val"), f"m_{state}_val", size=SIDE)
    return str(tmp_path)


def ids(records) -> list[str]:
    return [r.scene_id for r in records]


def test_states_filter_and_order(release) -> None:
    scenes = find_scenes(release, "train", states=["va", "DE"])
    assert ids(scenes) == ["m_de_00", "m_de_01", "m_de_02", "m_va_00"]
    assert {state_of(r) for r in scenes} == {"de", "va"}
    assert len(find_scenes(release, "train")) == 6


def test_unknown_state_is_a_clear_error(release) -> None:
    with pytest.raises(ValueError, match=r"unknown state\(s\) 'xx'; the release has de, md, ny, pa, va, wv"):
        find_scenes(release, "train", states=["de", "xx"])
    with pytest.raises(ValueError, match="empty list"):
        find_scenes(release, "train", states=[])


def test_a_state_with_no_scenes_says_what_is_there(release) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"state\(s\) ny .*the scenes there are of: de, md, va"):
        find_scenes(release, "train", states=["ny"])


def test_max_scenes_takes_states_in_turn_deterministically(release) -> None:
    first = find_scenes(release, "train", max_scenes=4)
    # One from each state in turn: de0, md0, va0, de1; returned sorted.
    assert ids(first) == ["m_de_00", "m_de_01", "m_md_00", "m_va_00"]
    assert ids(find_scenes(release, "train", max_scenes=4)) == ids(first)
    assert ids(find_scenes(release, "train", max_scenes=100)) == ids(find_scenes(release, "train"))
    assert ids(find_scenes(release, "train", states=["md"], max_scenes=1)) == ["m_md_00"]


def test_max_km2_caps_the_area(release) -> None:
    (one,) = find_scenes(release, "val", states=["de"])
    assert scene_km2(one) == pytest.approx(KM2)
    capped = find_scenes(release, "train", max_km2=2.5 * KM2)
    assert ids(capped) == ["m_de_00", "m_md_00"]
    assert sum(scene_km2(r) for r in capped) <= 2.5 * KM2
    both = find_scenes(release, "train", max_scenes=1, max_km2=10 * KM2)
    assert ids(both) == ["m_de_00"]
    with pytest.raises(ValueError, match="smaller than the first scene"):
        find_scenes(release, "train", max_km2=KM2 / 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_scenes": 0}, "max_scenes"), ({"max_scenes": 1.5}, "max_scenes"), ({"max_km2": -1.0}, "max_km2")],
)
def test_bad_caps_are_refused(release, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        find_scenes(release, "train", **kwargs)


def test_synthetic_layout_has_no_states(tmp_path) -> None:
    write_scene_pair(tmp_path / "train", "synth-000", size=SIDE)
    assert ids(find_scenes(str(tmp_path), "train", max_scenes=1)) == ["synth-000"]
    with pytest.raises(DatasetNotFoundError, match="synthetic layout"):
        find_scenes(str(tmp_path), "train", states=["de"])


def test_config_keys_default_to_everything_and_select(release) -> None:
    data = compose(["data=chesapeake", f"data.root_uri={release}"]).data
    assert (data.states, data.max_scenes, data.max_km2) == (None, None, None)
    assert len(scenes_from_config(data, "train")) == 6
    chosen = OmegaConf.merge(data, {"states": ["md", "va"], "max_scenes": 2})
    assert ids(scenes_from_config(chosen, "train")) == ["m_md_00", "m_va_00"]
    assert ids(scenes_from_config(chosen, "val")) == ["m_md_val", "m_va_val"]

"""Encoder versions in the registry on file:// and on a real moto S3 server: record, latest, lookups."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core import encoder_registry, storage
from core.encoder_registry import (
    ENCODER_CARD_NAME,
    RECONSTRUCTION_FIGURE,
    EncoderNotFoundError,
    list_encoder_versions,
    register_encoder_version,
    resolve_encoder_version,
)
from tests.core.registry_fixtures import registry_root

NAME = "clay-tiny-mae"


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest) -> str:
    return registry_root(request)


def _record(steps: int = 10) -> dict:
    return {
        "preset": "tiny",
        "encoder": {"dim": 192, "depth": 6},
        "objective": {"name": "mae", "mask_ratio": 0.75, "steps": steps},
        "start": {"kind": "random-init"},
        "lineage": {"input_uri": "file:///scenes", "scene_count": 3, "run_uri": "file:///runs/r1"},
    }


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    weights = tmp_path / "encoder.safetensors"
    weights.write_bytes(b"not-really-safetensors" * 50)
    figure = tmp_path / "recon.png"
    figure.write_bytes(b"\x89PNG fake")
    return weights, figure


def test_register_resolve_and_list(root: str, files: tuple[Path, Path]) -> None:
    weights, figure = files
    first = register_encoder_version(
        root, NAME, weights, _record(10), "# card one", {RECONSTRUCTION_FIGURE: figure}
    )
    second = register_encoder_version(root, NAME, weights, _record(20), "# card two", {})

    assert list_encoder_versions(root, NAME) == [first, second]
    latest = resolve_encoder_version(root, NAME)
    assert latest["version"] == second and latest["objective"]["steps"] == 20
    old = resolve_encoder_version(root, NAME, first)
    assert old["version"] == first and old["encoder_name"] == NAME
    assert old["uri"].endswith(f"/encoders/{NAME}/{first}/encoder.safetensors")
    assert storage.read_bytes(old["uri"]) == weights.read_bytes()
    assert old["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert old["bytes"] == weights.stat().st_size
    assert storage.read_bytes(old["figures"][RECONSTRUCTION_FIGURE]) == figure.read_bytes()
    assert storage.read_text(storage.join(old["version_uri"], ENCODER_CARD_NAME)) == "# card one"
    assert old["lineage"]["input_uri"] == "file:///scenes"


def test_latest_never_moves_backwards(root: str, files: tuple[Path, Path]) -> None:
    weights, _ = files
    first = register_encoder_version(root, NAME, weights, _record(), "card", {})
    second = register_encoder_version(root, NAME, weights, _record(), "card", {})
    # A slow writer of the older version finishing late must not move the pointer back.
    record = resolve_encoder_version(root, NAME, first)
    assert encoder_registry._move_latest(root, NAME, record) is False
    assert resolve_encoder_version(root, NAME)["version"] == second


def test_unknown_name_and_version_name_what_is_missing(root: str, files: tuple[Path, Path]) -> None:
    with pytest.raises(EncoderNotFoundError, match="no version is registered"):
        resolve_encoder_version(root, "nobody")
    assert list_encoder_versions(root, "nobody") == []
    weights, _ = files
    version = register_encoder_version(root, NAME, weights, _record(), "card", {})
    with pytest.raises(EncoderNotFoundError, match=rf"20990101T000000000000Z-000000000000.*{version}"):
        resolve_encoder_version(root, NAME, "20990101T000000000000Z-000000000000")


def test_half_written_version_is_not_listed(root: str, files: tuple[Path, Path]) -> None:
    weights, _ = files
    version = register_encoder_version(root, NAME, weights, _record(), "card", {})
    crashed = storage.join(encoder_registry.encoder_uri(root, NAME), "20000101T000000000000Z-aaaaaaaaaaaa")
    storage.write_bytes(storage.join(crashed, "encoder.safetensors"), b"partial")
    assert list_encoder_versions(root, NAME) == [version]


def test_bad_record_and_missing_files_are_refused(tmp_uri: str, files: tuple[Path, Path]) -> None:
    weights, _ = files
    record = _record()
    del record["lineage"]
    with pytest.raises(ValueError, match="lineage"):
        register_encoder_version(tmp_uri, NAME, weights, record, "card", {})
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        register_encoder_version(tmp_uri, NAME, weights.with_name("missing.safetensors"), _record(), "c", {})
    with pytest.raises(ValueError, match="encoder name"):
        register_encoder_version(tmp_uri, "../escape", weights, _record(), "card", {})
    assert list_encoder_versions(tmp_uri, NAME) == []


def test_registered_weights_load_through_the_pretrained_uri_path(tmp_uri: str, tmp_path: Path) -> None:
    """The stored file is what ``model.pretrained_uri`` loads: a bare, unfolded ClayEncoder state dict."""
    import torch
    from safetensors.torch import save_file

    from training.models.checkpoint import load_encoder, load_encoder_state_dict
    from training.models.clay import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("tiny")
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    version = register_encoder_version(tmp_uri, NAME, path, _record(), "card", {})

    resolved = resolve_encoder_version(tmp_uri, NAME)
    assert resolved["version"] == version
    fresh = load_encoder(build_encoder("tiny"), load_encoder_state_dict(resolved["uri"]))
    for key, value in encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    pointer = json.loads(storage.read_text(encoder_registry.latest_uri(tmp_uri, NAME)))
    assert pointer["version"] == version and pointer["uri"] == resolved["uri"]

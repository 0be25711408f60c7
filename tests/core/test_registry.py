"""The S3 model registry's storage on file:// and on a real moto S3 server: versions, pointers, CAS."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import registry, storage
from core.registry import VersionExistsError, VersionNotFoundError
from tests.core.registry_fixtures import CONFIG_YAML, MODEL, fake_export, register, registry_root

CAVEAT = "trained on synthetic data with an encoder that has not been pretrained"


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest) -> str:
    return registry_root(request)


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    return fake_export(tmp_path)


# ----------------------------------------------------------------------------- versions


def test_register_and_read_back(root: str, export_file: Path) -> None:
    baseline = {"miou": 0.08, "pixel_accuracy": 0.45, "class": "tree_canopy"}
    info = register(
        root,
        export_file,
        0.61,
        run_id="run-123",
        data_description="12 synthetic scenes, 2 held out",
        baseline=baseline,
        caveat=CAVEAT,
    )
    version = info["version"]

    assert registry.list_versions(root, MODEL) == [version]
    got = registry.get_version(root, MODEL, version)
    assert got["miou"] == 0.61 and got["run_id"] == "run-123"
    assert got["metrics"]["per_class_iou"]["barren"] is None  # NaN stored as JSON null
    assert got["metrics"]["per_class_iou"]["water"] == pytest.approx(0.61)
    assert storage.read_bytes(got["export_uri"]) == export_file.read_bytes()
    assert got["export_sha256"] == hashlib.sha256(export_file.read_bytes()).hexdigest()
    assert storage.read_text(storage.join(got["uri"], "config.yaml")) == CONFIG_YAML

    card = storage.read_text(storage.join(got["uri"], "MODEL_CARD.md"))
    for needle in (MODEL, version, "run-123", "12 synthetic scenes", CAVEAT, "| miou | 0.6100 | 0.0800 |"):
        assert needle in card
    assert "| water | 0.6100 |" in card and "| barren | n/a |" in card
    assert "majority class (tree_canopy)" in card
    assert "## Intended use" in card and "## Limitations" in card


def test_register_seed_import_from_uri(root: str, export_file: Path) -> None:
    staged = storage.join(root, "staging", "seed.safetensors")
    storage.upload(export_file, staged)
    source = {"kind": "seed-import", "checkpoint": "s3://seed/chesapeake-7class-segment_epoch-12.ckpt"}

    info = registry.register_version(
        root, MODEL, staged, {"miou": 0.42}, CONFIG_YAML, source=source, version="seed-import-1"
    )

    got = registry.get_version(root, MODEL, "seed-import-1")
    assert got["source"] == source and info["version"] == "seed-import-1"
    assert storage.read_bytes(got["export_uri"]) == export_file.read_bytes()
    assert "seed-import" in storage.read_text(storage.join(got["uri"], "MODEL_CARD.md"))


def test_card_records_the_encoder_weights(tmp_uri: str, export_file: Path) -> None:
    from core.model_card import RANDOM_ENCODER_LIMITATION, RANDOM_INIT, render_model_card

    root = tmp_uri + "/registry"
    random_init = {"source": RANDOM_INIT, "uri": None, "sha256": None, "verified": False}
    register(
        root, export_file, 0.5, version="v1", source={"kind": "training-run", "encoder_weights": random_init}
    )
    got = registry.get_version(root, MODEL, "v1")
    assert got["source"]["encoder_weights"] == random_init  # the manifest keeps it too
    card = storage.read_text(storage.join(got["uri"], "MODEL_CARD.md"))
    assert "| encoder weights | random-init (not pretrained) |" in card
    assert f"- {RANDOM_ENCODER_LIMITATION}" in card

    official = {"source": "clay-v1.5", "uri": "/cache/clay-v1.5.ckpt", "sha256": "ab" * 32, "verified": True}
    card = render_model_card(
        model_name=MODEL,
        version="v2",
        created_at="2026-01-01T00:00:00Z",
        version_uri="file:///r/v2",
        metrics={"miou": 0.7},
        encoder_weights=official,
    )
    row = next(line for line in card.splitlines() if line.startswith("| encoder weights |"))
    assert "clay-v1.5" in row and "ab" * 32 in row and "verified against the pinned digest" in row
    assert RANDOM_ENCODER_LIMITATION not in card
    unpinned = render_model_card(
        model_name=MODEL,
        version="v3",
        created_at="2026-01-01T00:00:00Z",
        version_uri="file:///r/v3",
        metrics={"miou": 0.7},
        source={"encoder_weights": {**official, "verified": False}},
    )
    assert "not verified against a pin" in unpinned


def test_versions_are_immutable(root: str, export_file: Path) -> None:
    register(root, export_file, 0.5, version="v1")
    before = storage.read_bytes(storage.join(registry.version_uri(root, MODEL, "v1"), "metrics.json"))

    with pytest.raises(VersionExistsError, match="immutable"):
        register(root, export_file, 0.9, version="v1")
    after = storage.read_bytes(storage.join(registry.version_uri(root, MODEL, "v1"), "metrics.json"))
    assert after == before


def test_half_written_version_is_invisible_and_its_id_stays_claimed(root: str, export_file: Path) -> None:
    prefix = registry.version_uri(root, MODEL, "v-crashed")
    storage.write_text(storage.join(prefix, "_claim.json"), "{}")
    storage.write_text(storage.join(prefix, "metrics.json"), '{"miou": 0.99}')
    register(root, export_file, 0.5, version="v-ok")

    assert registry.list_versions(root, MODEL) == ["v-ok"]
    with pytest.raises(VersionNotFoundError, match="list_versions"):
        registry.get_version(root, MODEL, "v-crashed")
    with pytest.raises(VersionExistsError, match="claimed by another writer"):
        register(root, export_file, 0.5, version="v-crashed")


def test_concurrent_registration_of_one_id_has_one_winner(tmp_uri: str, export_file: Path) -> None:
    def attempt(miou: float) -> str:
        try:
            register(tmp_uri, export_file, miou, version="same")
            return "ok"
        except VersionExistsError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, [0.1 * i for i in range(1, 9)]))
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7
    assert registry.list_versions(tmp_uri, MODEL) == ["same"]


def test_version_ids_sort_by_time_and_are_unique() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [registry.new_version_id(start + timedelta(microseconds=i)) for i in range(2000)]
    assert sorted(ids) == ids and len(set(ids)) == len(ids)
    # 48 random bits: 2000 ids in one microsecond collide with odds of about 1e-8 (24 bits: 11 %).
    same_moment = {registry.new_version_id(start) for _ in range(2000)}
    assert len(same_moment) == 2000


@pytest.mark.parametrize(
    ("metrics", "message"),
    [({"iou": 0.5}, "must contain 'miou'"), ({"miou": float("nan")}, "finite"), ({"miou": 1.5}, r"\[0, 1\]")],
)
def test_bad_metrics_are_refused(tmp_uri: str, export_file: Path, metrics: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.register_version(tmp_uri, MODEL, export_file, metrics, CONFIG_YAML)
    assert registry.list_versions(tmp_uri, MODEL) == []


def test_bad_names_and_missing_export_are_refused(tmp_uri: str, export_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid version id"):
        register(tmp_uri, export_file, 0.5, version="../escape")
    with pytest.raises(ValueError, match="invalid model name"):
        registry.register_version(tmp_uri, "a/b", export_file, {"miou": 0.5}, CONFIG_YAML)
    with pytest.raises(FileNotFoundError, match="compact export"):
        register(tmp_uri, tmp_path / "missing.safetensors", 0.5)


# ----------------------------------------------------------------------------- storage CAS


def test_put_if_match_semantics(root: str) -> None:
    uri = storage.join(root, "cas", "object.json")
    storage.put_if_match(uri, b"1", None)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if_match(uri, b"2", None)
    tag = storage.version_tag(uri)
    storage.put_if_match(uri, b"2", tag)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if_match(uri, b"3", tag)  # stale tag
    assert storage.read_bytes(uri) == b"2"
    current = storage.version_tag(uri)
    storage.delete(uri)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if_match(uri, b"4", current)  # deleted since read


def test_pointer_write_needs_the_tag_it_read(root: str) -> None:
    uri = registry.champion_uri(root, MODEL)
    assert registry.read_pointer_with_tag(uri) == (None, None)
    assert registry.write_pointer_if_match(uri, {"version": "a"}, None)
    assert not registry.write_pointer_if_match(uri, {"version": "b"}, None)  # exists already
    pointer, tag = registry.read_pointer_with_tag(uri)
    assert pointer == {"version": "a"} and registry.champion(root, MODEL) == pointer
    assert registry.write_pointer_if_match(uri, {"version": "b"}, tag)
    assert not registry.write_pointer_if_match(uri, {"version": "c"}, tag)  # stale tag
    assert registry.champion(root, MODEL) == {"version": "b"}


def test_conditional_put_is_atomic_for_threads_even_on_moto(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto checks If-None-Match and stores in two unlocked steps; widen that gap to prove the lock."""
    from moto.s3 import models

    real_get = models.S3Backend.get_object

    def slow_get(self, *args, **kwargs):
        found = real_get(self, *args, **kwargs)
        threading.Event().wait(0.2)
        return found

    monkeypatch.setattr(models.S3Backend, "get_object", slow_get)
    uri = storage.join(s3_bucket, "race.json")
    barrier = threading.Barrier(4)

    def write(i: int) -> str:
        barrier.wait()
        try:
            storage.put_if_match(uri, str(i).encode(), None)
            return "ok"
        except storage.PreconditionFailed:
            return "refused"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(write, range(4)))
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]


# ----------------------------------------------------------------------------- imports


def test_registry_imports_neither_torch_nor_mlflow() -> None:
    code = (
        "import sys, core.registry; "
        "bad = [m for m in ('torch', 'mlflow') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_card_lists_the_foreign_families_worst_first() -> None:
    from core.model_card import render_model_card

    families = {
        "plain": {"family": "noise 6 DN", "pixel_accuracy": 0.99, "patch_majority_share": 0.99},
        "gain_offset": {"family": "band gain ±10%", "pixel_accuracy": 0.77, "patch_majority_share": 0.96},
    }
    card = render_model_card(
        model_name=MODEL,
        version="v1",
        created_at="2026-01-01T00:00:00Z",
        version_uri="file:///r/v1",
        metrics={"miou": 0.9, "foreign_family": {"pixel_accuracy": 0.77, "families": families}},
    )
    rows = [line for line in card.splitlines() if line.startswith(("| gain_offset |", "| plain |"))]
    assert rows == [
        "| gain_offset | band gain ±10% | 0.7700 | 0.9600 |",
        "| plain | noise 6 DN | 0.9900 | 0.9900 |",
    ]
    assert "### Foreign scene families" not in render_model_card(
        model_name=MODEL,
        version="v2",
        created_at="2026-01-01T00:00:00Z",
        version_uri="file:///r/v2",
        metrics={},
    )

"""The S3 model registry on file:// and on a real moto S3 server: versions, gate, CAS, MLflow."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import registry, storage
from core.registry import PromotionDecision, VersionExistsError, VersionNotFoundError
from tests.training.pipeline_fixtures import promotion_history

MODEL = "chesapeake-landcover"
CLASSES = ["water", "tree_canopy", "low_vegetation", "barren", "impervious_other", "impervious_road"]
CONFIG_YAML = "model:\n  preset: tiny\ntraining:\n  epochs: 1\n"
CAVEAT = "trained on synthetic data with an encoder that has not been pretrained"


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest) -> str:
    """A registry root on a local folder and on the moto S3 server."""
    if request.param == "file":
        return request.getfixturevalue("tmp_uri") + "/registry"
    return request.getfixturevalue("s3_bucket") + "/registry"


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    path = tmp_path / "export" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"fake-safetensors-" + bytes(range(256)) * 4)
    return path


def _metrics(miou: float) -> dict:
    per_class = {name: min(1.0, miou + 0.01 * i) for i, name in enumerate(CLASSES)}
    per_class["barren"] = float("nan")  # absent from the held-out set
    return {"miou": miou, "weighted_iou": miou + 0.1, "pixel_accuracy": 0.9, "per_class_iou": per_class}


def _register(root: str, export: Path, miou: float, **kwargs) -> dict:
    return registry.register_version(root, MODEL, export, _metrics(miou), CONFIG_YAML, **kwargs)


# ----------------------------------------------------------------------------- versions


def test_register_and_read_back(root: str, export_file: Path) -> None:
    baseline = {"miou": 0.08, "pixel_accuracy": 0.45, "class": "tree_canopy"}
    info = _register(
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


def test_versions_are_immutable(root: str, export_file: Path) -> None:
    _register(root, export_file, 0.5, version="v1")
    before = storage.read_bytes(storage.join(registry.version_uri(root, MODEL, "v1"), "metrics.json"))

    with pytest.raises(VersionExistsError, match="immutable"):
        _register(root, export_file, 0.9, version="v1")
    after = storage.read_bytes(storage.join(registry.version_uri(root, MODEL, "v1"), "metrics.json"))
    assert after == before


def test_half_written_version_is_invisible_and_its_id_stays_claimed(root: str, export_file: Path) -> None:
    prefix = registry.version_uri(root, MODEL, "v-crashed")
    storage.write_text(storage.join(prefix, "_claim.json"), "{}")
    storage.write_text(storage.join(prefix, "metrics.json"), '{"miou": 0.99}')
    _register(root, export_file, 0.5, version="v-ok")

    assert registry.list_versions(root, MODEL) == ["v-ok"]
    with pytest.raises(VersionNotFoundError, match="list_versions"):
        registry.get_version(root, MODEL, "v-crashed")
    with pytest.raises(VersionExistsError, match="claimed by another writer"):
        _register(root, export_file, 0.5, version="v-crashed")


def test_concurrent_registration_of_one_id_has_one_winner(tmp_uri: str, export_file: Path) -> None:
    def attempt(miou: float) -> str:
        try:
            _register(tmp_uri, export_file, miou, version="same")
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
        _register(tmp_uri, export_file, 0.5, version="../escape")
    with pytest.raises(ValueError, match="invalid model name"):
        registry.register_version(tmp_uri, "a/b", export_file, {"miou": 0.5}, CONFIG_YAML)
    with pytest.raises(FileNotFoundError, match="compact export"):
        _register(tmp_uri, tmp_path / "missing.safetensors", 0.5)


# ----------------------------------------------------------------------------- promotion


def test_gated_promotion_and_history(root: str, export_file: Path) -> None:
    v1 = _register(root, export_file, 0.50, version="v1", run_id="r1")["version"]
    v2 = _register(root, export_file, 0.53, version="v2")["version"]
    v3 = _register(root, export_file, 0.60, version="v3")["version"]
    assert registry.champion(root, MODEL) is None
    assert registry.champion(root, MODEL) is None

    first = registry.promote_if_better(root, MODEL, v1, margin=0.05)
    assert first.promoted and first.changed and first.champion_version is None
    within_margin = registry.promote_if_better(root, MODEL, v2, margin=0.05)
    assert not within_margin.promoted
    assert (within_margin.champion_version, within_margin.champion_miou) == ("v1", 0.50)
    assert "margin 0.0500" in within_margin.reason
    beats = registry.promote_if_better(root, MODEL, v3, margin=0.05)
    assert beats.promoted and beats.champion_version == "v1"
    worse = registry.promote_if_better(root, MODEL, v1, margin=0.0)
    assert not worse.promoted and worse.champion_version == "v3"
    again = registry.promote_if_better(root, MODEL, v3, margin=0.05)
    assert again.promoted and not again.changed and again.outcome == "already-champion"

    pointer = registry.champion(root, MODEL)
    assert pointer["version"] == "v3" and pointer["miou"] == 0.60
    assert pointer["previous"] == {"version": "v1", "miou": 0.50}
    assert (
        registry.champion(root, MODEL)["export_uri"] == registry.get_version(root, MODEL, "v3")["export_uri"]
    )

    records = promotion_history(root, MODEL)
    assert [(r["version"], r["outcome"]) for r in records] == [
        ("v1", "promoted"),
        ("v2", "challenger"),
        ("v3", "promoted"),
        ("v1", "challenger"),
        ("v3", "already-champion"),
    ]
    assert records[1]["improvement"] == pytest.approx(0.03) and records[1]["margin"] == 0.05


def test_promoting_unregistered_version_or_bad_margin_is_refused(tmp_uri: str, export_file: Path) -> None:
    with pytest.raises(VersionNotFoundError):
        registry.promote_if_better(tmp_uri, MODEL, "nope")
    version = _register(tmp_uri, export_file, 0.5)["version"]
    with pytest.raises(ValueError, match="margin"):
        registry.promote_if_better(tmp_uri, MODEL, version, margin=-0.1)


def test_concurrent_promotions_end_with_the_best(root: str, export_file: Path) -> None:
    mious = [0.40, 0.45, 0.52, 0.55, 0.61, 0.66, 0.70, 0.73]
    versions = {_register(root, export_file, m, version=f"c{int(m * 100)}")["version"]: m for m in mious}
    order = list(versions)
    random.Random(7).shuffle(order)
    barrier = threading.Barrier(len(order))

    def promote(version: str) -> PromotionDecision:
        barrier.wait()
        return registry.promote_if_better(root, MODEL, version, margin=0.0)

    with ThreadPoolExecutor(len(order)) as pool:
        decisions = list(pool.map(promote, order))

    raw = storage.read_text(registry.champion_uri(root, MODEL))
    pointer = json.loads(raw)
    assert pointer["version"] == "c73" and pointer["miou"] == 0.73
    assert sum(d.version == "c73" and d.promoted for d in decisions) == 1
    records = promotion_history(root, MODEL)
    assert sorted(r["version"] for r in records) == sorted(order)
    for record in records:  # every promotion beat what it replaced; every challenger lost to a champion
        if record["champion_miou"] is not None:
            assert (record["candidate_miou"] > record["champion_miou"]) == record["promoted"]
    # The pointer chain is consistent: following "previous" only ever goes down in mIoU.
    promoted = {r["version"]: r for r in records if r["promoted"]}
    assert pointer["previous"] is None or pointer["previous"]["version"] in promoted


def _force_interleaving(monkeypatch: pytest.MonkeyPatch, first_writer: str) -> dict[str, int]:
    """Make two promoters read the same pointer before either writes; ``first_writer`` writes first."""
    read_barrier = threading.Barrier(2)
    first_done = threading.Event()
    reads: dict[str, int] = {}
    real_read = registry._read_pointer_with_tag
    real_put = storage.put_if_match

    def read(uri: str):
        result = real_read(uri)
        name = threading.current_thread().name
        reads[name] = reads.get(name, 0) + 1
        if reads[name] == 1:
            read_barrier.wait(timeout=10)
        return result

    def put(uri: str, data: bytes, expected_tag: str | None) -> None:
        if not uri.endswith("/champion.json"):
            return real_put(uri, data, expected_tag)
        version = json.loads(data)["version"]
        if version != first_writer:
            first_done.wait(timeout=10)
        try:
            return real_put(uri, data, expected_tag)
        finally:
            if version == first_writer:
                first_done.set()

    monkeypatch.setattr(registry, "_read_pointer_with_tag", read)
    monkeypatch.setattr(storage, "put_if_match", put)
    return reads


def _promote_pair(root: str) -> dict[str, PromotionDecision]:
    results: dict[str, PromotionDecision] = {}

    def run(version: str) -> None:
        results[version] = registry.promote_if_better(root, MODEL, version)

    threads = [threading.Thread(target=run, args=(v,), name=v) for v in ("better", "worse")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("first_writer", ["worse", "better"])
def test_cas_loser_rereads_instead_of_overwriting(
    root: str, export_file: Path, monkeypatch: pytest.MonkeyPatch, first_writer: str
) -> None:
    _register(root, export_file, 0.30, version="old")
    registry.promote_if_better(root, MODEL, "old")
    _register(root, export_file, 0.50, version="worse")
    _register(root, export_file, 0.70, version="better")
    reads = _force_interleaving(monkeypatch, first_writer)

    results = _promote_pair(root)

    loser = "better" if first_writer == "worse" else "worse"
    assert reads == {first_writer: 1, loser: 2}  # the loser re-read the pointer once
    assert results[first_writer].promoted and results[first_writer].champion_version == "old"
    assert results[loser].attempts == 2 and results[loser].champion_version == first_writer
    assert results["better"].promoted
    assert results["worse"].promoted == (first_writer == "worse")  # as a challenger if it lost
    pointer = registry.champion(root, MODEL)
    assert pointer["version"] == "better"
    assert pointer["previous"]["version"] == ("worse" if first_writer == "worse" else "old")
    assert len(promotion_history(root, MODEL)) == 3


def test_interleaving_without_cas_would_lose_the_better_model(
    tmp_uri: str, export_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sensitivity check of the test above: a blind write lets the worse model win."""
    _register(tmp_uri, export_file, 0.30, version="old")
    registry.promote_if_better(tmp_uri, MODEL, "old")
    _register(tmp_uri, export_file, 0.50, version="worse")
    _register(tmp_uri, export_file, 0.70, version="better")
    monkeypatch.setattr(storage, "put_if_match", lambda uri, data, tag: storage.write_bytes(uri, data))
    _force_interleaving(monkeypatch, "better")  # wraps the blind writer
    _promote_pair(tmp_uri)
    assert registry.champion(tmp_uri, MODEL)["version"] == "worse"


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


# ----------------------------------------------------------------------------- imports, MLflow


def test_registry_imports_neither_torch_nor_mlflow() -> None:
    code = (
        "import sys, core.registry; "
        "bad = [m for m in ('torch', 'mlflow') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_register_in_mlflow_moves_alias_only_on_promotion(
    tmp_uri: str, export_file: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    experiment = client.create_experiment("registry-test", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id

    def register_and_promote(miou: float, version: str) -> dict:
        info = _register(tmp_uri, export_file, miou, version=version, run_id=run_id)
        decision = registry.promote_if_better(tmp_uri, MODEL, version)
        return registry.register_in_mlflow(info, tracking, promoted=decision.promoted)

    first = register_and_promote(0.50, "v1")
    challenger = register_and_promote(0.40, "v2")
    assert first["alias_moved"] and not challenger["alias_moved"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first["version"]

    best = register_and_promote(0.70, "v3")
    champion_mv = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion_mv.version) == best["version"] != challenger["version"]
    assert champion_mv.tags["registry_version"] == "v3"
    assert champion_mv.tags["registry_uri"] == registry.version_uri(tmp_uri, MODEL, "v3")
    assert champion_mv.run_id == run_id and champion_mv.source == champion_mv.tags["registry_uri"]
    assert client.get_model_version(MODEL, challenger["version"]).tags["promotion"] == "challenger"

    # Idempotent, and a stale "promoted" (v1 is no longer the registry champion) cannot drag the alias back.
    again = registry.register_in_mlflow(registry.get_version(tmp_uri, MODEL, "v1"), tracking, promoted=True)
    assert again["version"] == first["version"] and not again["alias_moved"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == best["version"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 3


def test_concurrent_promotions_across_processes(tmp_uri: str, export_file: Path) -> None:
    """Separate training runs are separate processes: the file:// CAS (flock) must hold there too."""
    mious = [0.41, 0.57, 0.66, 0.52]
    for miou in mious:
        _register(tmp_uri, export_file, miou, version=f"p{int(miou * 100)}")
    code = "import sys; from core import registry; registry.promote_if_better(*sys.argv[1:4])"
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, tmp_uri, MODEL, f"p{int(m * 100)}"], cwd=repo)
        for m in mious
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0] * len(procs)
    assert registry.champion(tmp_uri, MODEL)["version"] == "p66"
    assert len(promotion_history(tmp_uri, MODEL)) == len(mious)

"""The promotion gate on file:// and on a real moto S3 server: margins, history, the CAS loop."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core import registry, storage
from core.registry import VersionNotFoundError
from tests.core.registry_fixtures import MODEL, fake_export, register, registry_root
from tests.training.pipeline_fixtures import promotion_history
from training import promotion
from training.promotion import PromotionDecision


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest) -> str:
    return registry_root(request)


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    return fake_export(tmp_path)


def test_gated_promotion_and_history(root: str, export_file: Path) -> None:
    v1 = register(root, export_file, 0.50, version="v1", run_id="r1")["version"]
    v2 = register(root, export_file, 0.53, version="v2")["version"]
    v3 = register(root, export_file, 0.60, version="v3")["version"]
    assert registry.champion(root, MODEL) is None
    assert registry.champion(root, MODEL) is None

    first = promotion.promote_if_better(root, MODEL, v1, margin=0.05)
    assert first.promoted and first.changed and first.champion_version is None
    within_margin = promotion.promote_if_better(root, MODEL, v2, margin=0.05)
    assert not within_margin.promoted
    assert (within_margin.champion_version, within_margin.champion_miou) == ("v1", 0.50)
    assert "margin 0.0500" in within_margin.reason
    beats = promotion.promote_if_better(root, MODEL, v3, margin=0.05)
    assert beats.promoted and beats.champion_version == "v1"
    worse = promotion.promote_if_better(root, MODEL, v1, margin=0.0)
    assert not worse.promoted and worse.champion_version == "v3"
    again = promotion.promote_if_better(root, MODEL, v3, margin=0.05)
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
        promotion.promote_if_better(tmp_uri, MODEL, "nope")
    version = register(tmp_uri, export_file, 0.5)["version"]
    with pytest.raises(ValueError, match="margin"):
        promotion.promote_if_better(tmp_uri, MODEL, version, margin=-0.1)


def test_concurrent_promotions_end_with_the_best(root: str, export_file: Path) -> None:
    mious = [0.40, 0.45, 0.52, 0.55, 0.61, 0.66, 0.70, 0.73]
    versions = {register(root, export_file, m, version=f"c{int(m * 100)}")["version"]: m for m in mious}
    order = list(versions)
    random.Random(7).shuffle(order)
    barrier = threading.Barrier(len(order))

    def promote(version: str) -> PromotionDecision:
        barrier.wait()
        return promotion.promote_if_better(root, MODEL, version, margin=0.0)

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
    real_read = registry.read_pointer_with_tag
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

    monkeypatch.setattr(registry, "read_pointer_with_tag", read)
    monkeypatch.setattr(storage, "put_if_match", put)
    return reads


def _promote_pair(root: str) -> dict[str, PromotionDecision]:
    results: dict[str, PromotionDecision] = {}

    def run(version: str) -> None:
        results[version] = promotion.promote_if_better(root, MODEL, version)

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
    register(root, export_file, 0.30, version="old")
    promotion.promote_if_better(root, MODEL, "old")
    register(root, export_file, 0.50, version="worse")
    register(root, export_file, 0.70, version="better")
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
    register(tmp_uri, export_file, 0.30, version="old")
    promotion.promote_if_better(tmp_uri, MODEL, "old")
    register(tmp_uri, export_file, 0.50, version="worse")
    register(tmp_uri, export_file, 0.70, version="better")
    monkeypatch.setattr(storage, "put_if_match", lambda uri, data, tag: storage.write_bytes(uri, data))
    _force_interleaving(monkeypatch, "better")  # wraps the blind writer
    _promote_pair(tmp_uri)
    assert registry.champion(tmp_uri, MODEL)["version"] == "worse"


def test_concurrent_promotions_across_processes(tmp_uri: str, export_file: Path) -> None:
    """Separate training runs are separate processes: the file:// CAS (flock) must hold there too."""
    mious = [0.41, 0.57, 0.66, 0.52]
    for miou in mious:
        register(tmp_uri, export_file, miou, version=f"p{int(miou * 100)}")
    code = "import sys; from training import promotion; promotion.promote_if_better(*sys.argv[1:4])"
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, tmp_uri, MODEL, f"p{int(m * 100)}"], cwd=repo)
        for m in mious
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0] * len(procs)
    assert registry.champion(tmp_uri, MODEL)["version"] == "p66"
    assert len(promotion_history(tmp_uri, MODEL)) == len(mious)

"""End to end: ``pipeline.asl.json`` on moto's interpreter, real handlers, real Postgres ledger.

Scenes are 256 px synthetic NAIP, the model a tiny random segmenter promoted in a test registry.
"""

from __future__ import annotations

import json

import pytest

from inference import chain, handlers
from inference.ledger import RunStatus, SceneStatus, repository
from inference.ledger.models import Scene
from inference.statemachine import local
from tests.data.builders import BAD_KINDS
from tests.inference.chain_fixtures import (
    chain_settings,
    make_champion,
    migrated,
    write_bad,
    write_scene,
)
from training import storage


def run(settings, execution_id: str) -> local.LocalExecution:
    handlers.configure(settings)
    try:
        return local.run_execution(settings.manifest_prefix, execution_id=execution_id)
    finally:
        handlers.configure(None)


def scenes(settings) -> list[Scene]:
    with chain.session(settings) as s:
        return list(s.query(Scene).order_by(Scene.id))


def predictions(settings) -> list:
    with chain.session(settings) as s:
        return [p for scene in scenes(settings) for p in repository.predictions_for(s, scene)]


@pytest.fixture
def s3_settings(s3_bucket, postgres_url):
    settings = chain_settings(s3_bucket, migrated(postgres_url))
    make_champion(settings.registry_uri)
    return settings


@pytest.fixture
def local_settings(tmp_uri, postgres_url):
    settings = chain_settings(tmp_uri, migrated(postgres_url))
    make_champion(settings.registry_uri)
    return settings


def test_end_to_end_on_s3_quarantines_every_bad_input_and_predicts_the_good(s3_settings) -> None:
    settings = s3_settings
    good = [write_scene(storage.join(settings.input_uri, f"good-{i}.tif"), seed=100 + i) for i in range(3)]
    duplicate = storage.join(settings.input_uri, "copies", "good-0-again.tif")
    storage.write_bytes(duplicate, storage.read_bytes(good[0]))
    bad = {kind: write_bad(storage.join(settings.input_uri, f"bad-{kind}.tif"), kind) for kind in BAD_KINDS}

    result = run(settings, "e2e-1")
    assert result.succeeded, (result.error, result.cause)
    assert [c for c, outcome in result.calls if c == "infer" and outcome == "ok"] == ["infer"] * 3
    version = registry_version(settings)

    assert len(scenes(settings)) == 3 + len(BAD_KINDS)  # the duplicate is an alias, not a scene
    with chain.session(settings) as s:
        by_uri = {uri: repository.known_source(s, uri) for uri in [*good, duplicate, *bad.values()]}
    assert by_uri[duplicate].id == by_uri[good[0]].id
    for kind, uri in bad.items():
        scene = by_uri[uri]
        assert scene.status == SceneStatus.quarantined and scene.error == kind, (kind, scene.error)
        assert scene.error_message

    preds = {p.scene_id: p for p in predictions(settings)}
    with chain.session(settings) as s:
        run_row = repository.get_run(s, "e2e-1")
        run_metrics = {(m.name, m.key): m.value for m in repository.metrics_for(s, run_row.id)}
        scene_metrics = repository.metrics_for(s, run_row.id, by_uri[good[1]].id)
    for uri in good:
        scene = by_uri[uri]
        assert scene.status == SceneStatus.predicted and scene.area_km2 == pytest.approx(0.065536)
        pred = preds[scene.id]
        assert (pred.model_version, pred.input_sha256, pred.run_id) == (version, scene.sha256, run_row.id)
        assert pred.class_uri == f"{settings.output_uri}/{scene.sha256}/{version}/classes.tif"
        for uri_out in (pred.class_uri, pred.confidence_uri, pred.stac_uri):
            assert storage.exists(uri_out), uri_out
        item = json.loads(storage.read_text(pred.stac_uri))
        assert item["type"] == "Feature" and {"class", "confidence"} <= set(item["assets"])
        assert version in json.dumps(item["properties"]) and scene.sha256 in json.dumps(item["properties"])

    assert run_row.status == RunStatus.succeeded and run_row.finished_at is not None
    assert (run_row.scenes_discovered, run_row.scenes_quarantined) == (3 + len(BAD_KINDS), len(BAD_KINDS))
    assert (run_row.scenes_predicted, run_row.scenes_failed) == (3, 0)
    assert run_metrics[("scenes_predicted", "")] == 3
    assert run_metrics[("cost_usd", "")] > 0 and run_metrics[("drift_flag", "")] in (0.0, 1.0)
    assert {m.name for m in scene_metrics} >= {"class_fraction", "mean_max_softmax", "band_mean"}
    assert result.output["scenes"] == 3


def registry_version(settings) -> str:
    return str(chain.champion(settings)["version"])


def test_rerun_is_idempotent_and_does_not_rehash(local_settings, monkeypatch) -> None:
    settings = local_settings
    for i in range(2):
        write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=200 + i)
    assert run(settings, "idem-1").succeeded
    first = {p.scene_id: (p.id, p.class_uri, p.finished_at) for p in predictions(settings)}
    assert len(first) == 2

    hashed: list[str] = []
    real_hash = storage.sha256_of
    monkeypatch.setattr(storage, "sha256_of", lambda uri: hashed.append(uri) or real_hash(uri))
    second = run(settings, "idem-2")
    assert second.succeeded
    assert [c for c, _ in second.calls] == ["process", "observe"]  # nothing to predict
    assert hashed == []  # known (uri, etag) pairs are not re-read
    assert {p.scene_id: (p.id, p.class_uri, p.finished_at) for p in predictions(settings)} == first
    with chain.session(settings) as s:
        assert repository.get_run(s, "idem-2").scenes_predicted == 0

    # A redelivered Map item is a no-op too.
    scene = scenes(settings)[0]
    item = {"scene_id": scene.id, "uri": scene.source_uri, "sha256": scene.sha256}
    out = chain.infer(settings, "idem-2", item)
    assert out["status"] == "skipped" and out["class_uri"] == first[scene.id][1]
    assert len(predictions(settings)) == 2


def test_crash_mid_run_then_rerun_completes_without_duplicates(local_settings, monkeypatch) -> None:
    settings = local_settings
    for i in range(3):
        write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=300 + i)

    import inference.predict

    real_predict, calls = inference.predict.predict_scene, []

    def crashing(predictor, uri, **kwargs):
        calls.append(uri)
        if len(calls) == 2:
            raise SystemExit(137)  # the Lambda dies mid-scene: no except clause runs
        return real_predict(predictor, uri, **kwargs)

    monkeypatch.setattr(inference.predict, "predict_scene", crashing)
    first = run(settings, "crash-1")
    assert ("infer", "error") in first.calls
    status = {s.id: s.status for s in scenes(settings)}
    assert sorted(status.values()) == [SceneStatus.predicted, SceneStatus.predicted, SceneStatus.predicting]
    (crashed_id,) = [i for i, st in status.items() if st == SceneStatus.predicting]

    monkeypatch.setattr(inference.predict, "predict_scene", real_predict)
    second = run(settings, "crash-2")
    assert second.succeeded, (second.error, second.cause)
    assert [c for c, _ in second.calls].count("infer") == 1  # only the lost scene

    final = scenes(settings)
    assert all(s.status == SceneStatus.predicted for s in final)
    preds = predictions(settings)
    assert sorted(p.scene_id for p in preds) == sorted(s.id for s in final)  # one each, none lost
    assert next(s for s in final if s.id == crashed_id).attempts == 2
    folders = {uri.rsplit("/", 3)[-3] for uri in storage.list_uris(settings.output_uri, suffix="classes.tif")}
    assert folders == {s.sha256 for s in final}

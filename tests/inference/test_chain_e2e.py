"""End to end: ``pipeline.asl.json`` on moto's interpreter, real handlers, real Postgres ledger.

Scenes are 256 px synthetic NAIP, the model a tiny random segmenter promoted in a test registry.
"""

from __future__ import annotations

import json

import pytest

from core import artifacts, storage
from inference import handlers, model_cache, transactions
from inference.ledger import RunStatus, SceneStatus, repository
from inference.ledger.models import Scene
from inference.steps.assemble import assemble
from inference.steps.infer import infer
from inference.steps.process import process
from setup.tools import local_statemachine as local
from tests.data.builders import BAD_KINDS
from tests.inference.chain_fixtures import (
    chain_settings,
    make_champion,
    migrated,
    write_bad,
    write_scene,
)


def run(settings, execution_id: str) -> local.LocalExecution:
    handlers.configure(settings)
    try:
        return local.run_execution(settings.manifest_prefix, execution_id=execution_id)
    finally:
        handlers.configure(None)


def scenes(settings) -> list[Scene]:
    with transactions.session(settings) as s:
        return list(s.query(Scene).order_by(Scene.id))


def predictions(settings) -> list:
    with transactions.session(settings) as s:
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
    with transactions.session(settings) as s:
        by_uri = {uri: repository.known_source(s, uri) for uri in [*good, duplicate, *bad.values()]}
    assert by_uri[duplicate].id == by_uri[good[0]].id
    for kind, uri in bad.items():
        scene = by_uri[uri]
        assert scene.status == SceneStatus.quarantined and scene.error == kind, (kind, scene.error)
        assert scene.error_message

    preds = {p.scene_id: p for p in predictions(settings)}
    with transactions.session(settings) as s:
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
    return str(model_cache.champion(settings)["version"])


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
    assert [c for c, _ in second.calls] == ["process", "observe", "notify"]  # nothing to predict
    assert hashed == []  # known (uri, etag) pairs are not re-read
    assert {p.scene_id: (p.id, p.class_uri, p.finished_at) for p in predictions(settings)} == first
    with transactions.session(settings) as s:
        assert repository.get_run(s, "idem-2").scenes_predicted == 0

    # Redelivered Map items are no-ops too.
    scene = scenes(settings)[0]
    item = {
        "scene_id": scene.id,
        "uri": scene.source_uri,
        "sha256": scene.sha256,
        "model_version": registry_version(settings),
    }
    block = {**item, "block": 0, "block_chips": 8, "window": [0, 0, 256, 256]}
    assert infer(settings, "idem-2", block)["status"] == "skipped"
    out = assemble(settings, "idem-2", item)
    assert out["status"] == "skipped" and out["class_uri"] == first[scene.id][1]
    assert len(predictions(settings)) == 2


def test_a_promotion_mid_run_does_not_change_the_runs_model(local_settings) -> None:
    """process plans the run with the champion of that moment; a promotion before infer leaves
    every block and the scene to that version, and the next run takes the new champion."""
    from core import registry
    from tests.inference.chain_fixtures import CHAMPION_EXPORT, MODEL_NAME, tiny_throughput
    from tests.inference.helpers_core import tiny_export
    from training import promotion

    settings = local_settings
    write_scene(storage.join(settings.input_uri, "scene-0.tif"), seed=410)
    planned = process(settings, "pin-1")
    blocks = json.loads(storage.read_text(planned["manifest_uri"]))
    items = json.loads(storage.read_text(planned["scenes_uri"]))
    assert blocks and {b["model_version"] for b in blocks + items} == {planned["model_version"]}

    newer = registry.register_version(
        settings.registry_uri,
        MODEL_NAME,
        tiny_export(seed=1, **CHAMPION_EXPORT),
        {"miou": 0.9, "throughput": tiny_throughput()},
        "model: tiny\n",
        caveat="promoted mid-run",
    )
    assert promotion.promote_if_better(settings.registry_uri, MODEL_NAME, newer["version"]).promoted
    assert registry_version(settings) == newer["version"] != planned["model_version"]

    for block in blocks:
        out = infer(settings, "pin-1", block)
        assert (out["status"], out["model_version"]) == ("predicted", planned["model_version"])
    for item in items:
        out = assemble(settings, "pin-1", item)
        assert out["status"] == "predicted" and out["model_version"] == planned["model_version"]
    with transactions.session(settings) as s:
        (scene,) = list(s.query(Scene))
        assert [p.model_version for p in repository.predictions_for(s, scene)] == [planned["model_version"]]

    write_scene(storage.join(settings.input_uri, "scene-1.tif"), seed=411)  # new imagery
    following = process(settings, "pin-2")
    assert following["model_version"] == newer["version"] and following["scenes"] == 1
    new_blocks = json.loads(storage.read_text(following["manifest_uri"]))
    assert {b["model_version"] for b in new_blocks} == {newer["version"]}


def test_crash_mid_run_then_rerun_completes_without_duplicates(local_settings, monkeypatch) -> None:
    settings = local_settings
    for i in range(3):
        write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=300 + i)

    import inference.predict

    real_predict, calls = inference.predict.predict_block, []

    def crashing(predictor, uri, *args, **kwargs):
        calls.append(uri)
        if len(calls) == 2:
            raise SystemExit(137)  # the Lambda dies mid-block: no except clause runs
        return real_predict(predictor, uri, *args, **kwargs)

    monkeypatch.setattr(inference.predict, "predict_block", crashing)
    first = run(settings, "crash-1")
    assert ("infer", "error") in first.calls
    status = {s.id: s.status for s in scenes(settings)}
    # The scene whose block was lost is not assembled: failed, its lease released.
    assert sorted(status.values()) == [SceneStatus.failed, SceneStatus.predicted, SceneStatus.predicted]
    (crashed_id,) = [i for i, st in status.items() if st == SceneStatus.failed]

    monkeypatch.setattr(inference.predict, "predict_block", real_predict)
    second = run(settings, "crash-2")
    assert second.succeeded, (second.error, second.cause)
    assert [c for c, _ in second.calls].count("infer") == 1  # only the lost block

    final = scenes(settings)
    assert all(s.status == SceneStatus.predicted for s in final)
    preds = predictions(settings)
    assert sorted(p.scene_id for p in preds) == sorted(s.id for s in final)  # one each, none lost
    assert next(s for s in final if s.id == crashed_id).attempts == 2
    folders = {uri.rsplit("/", 3)[-3] for uri in storage.list_uris(settings.output_uri, suffix="classes.tif")}
    assert folders == {s.sha256 for s in final}


@pytest.mark.slow
def test_a_scene_in_many_blocks_equals_its_one_call_prediction(tmp_uri, postgres_url, monkeypatch) -> None:
    # 256 px scenes in 128 px chips: 3 x 3 chips, so one chip a side makes 9 blocks.
    settings = chain_settings(tmp_uri, migrated(postgres_url), block_chips=1)
    make_champion(settings.registry_uri)
    uri = write_scene(storage.join(settings.input_uri, "scene.tif"), seed=400)

    import inference.predict

    real_block, seen = inference.predict.predict_block, []

    def one_block_dies(predictor, path, block_index=0, **kwargs):
        seen.append(block_index)
        if block_index == 4:
            raise SystemExit(137)  # the Lambda dies on the middle block
        return real_block(predictor, path, block_index, **kwargs)

    monkeypatch.setattr(inference.predict, "predict_block", one_block_dies)
    first = run(settings, "blocks-1")
    assert sorted(seen) == list(range(9)) and predictions(settings) == []
    (scene,) = scenes(settings)
    assert scene.status == SceneStatus.failed and scene.error == "blocks_incomplete"
    with transactions.session(settings) as s:
        blocks = repository.blocks_of(s, scene.id, registry_version(settings))
        assert [b.status.value for b in blocks].count("predicted") == 8
        assert first.output["scenes"] == 0 and repository.get_run(s, "blocks-1").scenes_failed == 1

    seen.clear()
    monkeypatch.setattr(
        inference.predict, "predict_block", lambda *a, **k: seen.append(a[2]) or real_block(*a, **k)
    )
    second = run(settings, "blocks-2")
    assert second.succeeded and seen == [4]  # only the lost block is redone
    (pred,) = predictions(settings)
    with transactions.session(settings) as s:
        run_row = repository.get_run(s, "blocks-2")
        assert (run_row.scenes_predicted, run_row.scenes_failed) == (1, 0) and pred.run_id == run_row.id
        assert repository.blocks_of_run(s, run_row.id) == 1

    # The assembled COGs equal a one-call prediction of the scene, and the block files are gone.
    import rasterio

    model = model_cache.load_champion(settings)
    one = real_block(
        model.predictor,
        storage.local_path(uri),
        block_chips=None,
        chip_size=settings.chip_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
    )
    with rasterio.open(storage.local_path(pred.class_uri)) as src:
        classes = src.read(1)
        assert src.transform == one.transform
    with rasterio.open(storage.local_path(pred.confidence_uri)) as src:
        confidence = src.read(1)
    valid = one.valid
    assert (classes[valid] == one.classes[valid]).mean() >= 0.995
    assert (confidence[valid].astype(int) - one.confidence[valid]).__abs__().max() <= 2
    summary = json.loads(storage.read_text(pred.class_uri.replace("classes.tif", "summary.json")))
    assert sum(summary["class_counts"]) == int(valid.sum())
    assert storage.list_uris(storage.join(settings.output_uri, artifacts.BLOCKS_DIR)) == []

"""The shadow challenger on the local chain: real handlers' library functions, a real Postgres
ledger, local storage; the figures checked against a direct comparison of the two COGs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from core import artifacts, registry, storage
from core.classes import CLASS_NAMES, NODATA_CLASS_ID
from inference import shadow, transactions
from inference.ledger import repository
from inference.ledger.models import Metric, ShadowComparison, ShadowStatus
from inference.steps.assemble import assemble
from inference.steps.infer import infer
from inference.steps.observe import observe
from inference.steps.process import process
from tests.inference.chain_fixtures import (
    CHAMPION_EXPORT,
    chain_settings,
    make_challenger,
    make_champion,
    migrated,
    write_scene,
)
from tests.inference.helpers_core import tiny_export
from training import promotion


def test_compare_matches_a_direct_count() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 7, size=(40, 50)).astype(np.uint8)
    b = np.where(rng.random(a.shape) < 0.7, a, rng.integers(0, 7, size=a.shape)).astype(np.uint8)
    got = shadow.compare(a, b)
    valid = (a != NODATA_CLASS_ID) & (b != NODATA_CLASS_ID)
    assert got.pixels == int(valid.sum())
    assert got.agreement == pytest.approx(float((a == b)[valid].mean()))
    for c, name in enumerate(CLASS_NAMES):
        if c == NODATA_CLASS_ID:
            assert name not in got.iou and name not in got.area_delta
            continue
        inter = np.sum((a == c) & (b == c) & valid)
        union = np.sum(((a == c) | (b == c)) & valid)
        assert got.iou[name] == pytest.approx(inter / union)
        assert got.area_delta[name] == pytest.approx(
            (np.sum((b == c) & valid) - np.sum((a == c) & valid)) / valid.sum()
        )
    with pytest.raises(ValueError, match="shape"):
        shadow.compare(a, b[:-1])


@pytest.fixture
def settings(tmp_uri, postgres_url):
    s = chain_settings(tmp_uri, migrated(postgres_url), block_chips=1)
    make_champion(s.registry_uri)
    return s


def _run_champion(settings, execution_id: str) -> dict:
    out = process(settings, execution_id)
    for item in _read_json(out["manifest_uri"]):
        infer(settings, execution_id, item)
    for item in _read_json(out["scenes_uri"]):
        assemble(settings, execution_id, item)
    return out


def _run_shadow(settings, execution_id: str, out: dict) -> tuple[list[dict], list[dict]]:
    version = out["challenger_version"]
    blocks = [shadow.infer_block(settings, execution_id, i, version) for i in _read_json(out["manifest_uri"])]
    scenes = [
        shadow.assemble_scene(settings, execution_id, i, version) for i in _read_json(out["scenes_uri"])
    ]
    return blocks, scenes


def _read_json(uri: str) -> list[dict]:
    import json

    return json.loads(storage.read_text(uri))


def _read(uri: str) -> np.ndarray:
    with rasterio.open(storage.local_path(uri)) as src:
        return src.read(1)


@pytest.mark.slow
def test_shadow_run_writes_both_outputs_and_records_what_a_direct_comparison_finds(settings) -> None:
    challenger = make_challenger(settings.registry_uri)
    for seed in (1, 2):
        write_scene(storage.join(settings.input_uri, f"scene-{seed}.tif"), seed, size=300)

    out = _run_champion(settings, "exec-1")
    assert out["challenger_version"] == challenger
    assert out["blocks"] > out["scenes"] == 2  # several blocks a scene: the shadow predicts the same ones
    blocks, scenes = _run_shadow(settings, "exec-1", out)
    assert {b["status"] for b in blocks} == {"predicted"}
    assert {s["status"] for s in scenes} == {"compared"}
    observed = observe(settings, "exec-1")
    assert observed["shadow"]["scenes"] == 2 and observed["shadow"]["challenger_version"] == challenger
    assert observed["shadow"]["cost_usd"] > 0

    with transactions.session(settings) as s:
        rows = list(s.query(ShadowComparison).order_by(ShadowComparison.scene_id))
        assert [r.status for r in rows] == [ShadowStatus.compared] * 2
        for row in rows:
            scene = transactions.get_scene(s, row.scene_id)
            served = repository.prediction_by(s, scene, row.champion_version)
            champion_map, challenger_map = _read(served.class_uri), _read(row.class_uri)
            # The challenger's COG is under the shadow prefix, never beside the served outputs.
            assert (
                row.class_uri
                == artifacts.shadow_outputs(settings.output_uri, scene.sha256, challenger).class_uri
            )
            assert "/_shadow/" in row.class_uri and "/_shadow/" not in served.class_uri
            assert storage.exists(
                artifacts.shadow_outputs(settings.output_uri, scene.sha256, challenger).quicklook_uri
            )
            # Pixels both models give a land-cover class (a random model may say No Data anywhere).
            valid = (champion_map != NODATA_CLASS_ID) & (challenger_map != NODATA_CLASS_ID)
            assert row.pixels == int(valid.sum())
            assert row.agreement == pytest.approx(float((champion_map == challenger_map)[valid].mean()))
            assert 0.0 < row.agreement < 1.0  # two different random models: neither all nor nothing
            metrics = {
                (m.name, m.key): m.value
                for m in s.query(Metric).filter_by(scene_id=row.scene_id, model_version=challenger)
            }
            for c, name in enumerate(CLASS_NAMES):
                if c == NODATA_CLASS_ID:
                    continue
                a, b = (champion_map == c) & valid, (challenger_map == c) & valid
                assert metrics[(repository.SHADOW_AREA_DELTA, name)] == pytest.approx(
                    (b.sum() - a.sum()) / valid.sum()
                )
                if (a | b).any():
                    assert metrics[(repository.SHADOW_IOU, name)] == pytest.approx(
                        (a & b).sum() / (a | b).sum()
                    )
            # The shadow blocks are removed once compared.
            assert not storage.exists(
                artifacts.block_output_uri(settings.output_uri, scene.sha256, challenger, 0, shadow=True)
            )
        run_id = repository.get_run(s, "exec-1").id
        run_metrics = {m.name: m.value for m in repository.metrics_for(s, run_id)}
        weighted = sum(r.agreement * r.pixels for r in rows) / sum(r.pixels for r in rows)
        assert run_metrics["shadow_agreement"] == pytest.approx(weighted)
        assert run_metrics["shadow_scenes"] == 2
        evidence = repository.shadow_evidence(s, rows[0].champion_version, challenger)
    assert evidence["scenes"] == 2 and evidence["agreement"] == pytest.approx(weighted)

    # Re-running the shadow pass (a redrive) changes nothing and counts nothing twice.
    blocks, scenes = _run_shadow(settings, "exec-1", out)
    assert {b["status"] for b in blocks} == {"skipped"} and {s["status"] for s in scenes} == {"skipped"}
    with transactions.session(settings) as s:
        assert s.query(ShadowComparison).count() == 2
        assert s.query(Metric).filter_by(name=repository.SHADOW_AREA_DELTA).count() == 2 * (
            len(CLASS_NAMES) - 1
        )
    # A run with nothing new has no shadow pass.
    assert process(settings, "exec-2")["challenger_version"] is None


@pytest.mark.slow
def test_missing_shadow_blocks_fail_the_comparison_and_the_next_pass_finishes_it(settings) -> None:
    challenger = make_challenger(settings.registry_uri)
    write_scene(storage.join(settings.input_uri, "scene.tif"), 4, size=300)
    out = _run_champion(settings, "exec-1")
    items = _read_json(out["manifest_uri"])
    shadow.infer_block(settings, "exec-1", items[0], challenger)  # the other blocks' calls died
    (scene_item,) = _read_json(out["scenes_uri"])
    assert shadow.assemble_scene(settings, "exec-1", scene_item, challenger)["status"] == "incomplete"
    with transactions.session(settings) as s:
        (row,) = s.query(ShadowComparison).all()
        assert (
            row.status == ShadowStatus.failed and row.error == "blocks_incomplete" and row.lease_owner is None
        )

    # The next run's process offers the scene again (the champion's calls on it are no-ops) and
    # its shadow pass predicts only the missing blocks, then records the comparison once.
    out2 = process(settings, "exec-2")
    assert out2["challenger_version"] == challenger and out2["scenes"] == 1
    assert _read_json(out2["manifest_uri"]) == items
    assert {infer(settings, "exec-2", i)["status"] for i in items} == {"skipped"}
    blocks, scenes = _run_shadow(settings, "exec-2", out2)
    assert [b["status"] for b in blocks] == ["skipped"] + ["predicted"] * (len(items) - 1)
    assert [s["status"] for s in scenes] == ["compared"]
    with transactions.session(settings) as s:
        (row,) = s.query(ShadowComparison).all()
        # The failed assembly was one attempt, the pass that finished it another.
        assert row.status == ShadowStatus.compared and row.attempts == 2 and 0.0 <= row.agreement <= 1.0
        assert row.run_id == repository.get_run(s, "exec-2").id
    assert process(settings, "exec-3")["scenes"] == 0  # nothing left


def test_a_live_shadow_lease_of_another_execution_is_left_alone(settings) -> None:
    challenger = make_challenger(settings.registry_uri)
    live = settings.model_copy(update={"lease_s": 600.0})
    write_scene(storage.join(settings.input_uri, "scene.tif"), 4, size=300)
    out = _run_champion(live, "exec-1")
    items = _read_json(out["manifest_uri"])
    assert shadow.infer_block(live, "exec-1", items[0], challenger)["status"] == "predicted"
    process(live, "exec-2")
    assert shadow.infer_block(live, "exec-2", items[1], challenger)["status"] == "leased_elsewhere"
    (scene_item,) = _read_json(out["scenes_uri"])
    assert shadow.assemble_scene(live, "exec-2", scene_item, challenger)["status"] == "leased_elsewhere"
    with transactions.session(settings) as s:
        (row,) = s.query(ShadowComparison).all()
        assert row.lease_owner == "exec-1" and row.attempts == 1 and row.status == ShadowStatus.predicting


def test_promotion_can_wait_for_shadow_evidence_from_the_ledger(settings) -> None:
    champion = registry.champion(settings.registry_uri, settings.model_name)["version"]
    better = registry.register_version(
        settings.registry_uri,
        settings.model_name,
        tiny_export(seed=1, **CHAMPION_EXPORT),
        {"miou": 0.9},
        "model: tiny\n",
    )["version"]
    criteria = promotion.ShadowCriteria(min_scenes=1, min_agreement=0.0, max_area_shift=1.0)
    decision = promotion.promote_if_better(
        settings.registry_uri, settings.model_name, better, shadow=criteria
    )
    assert decision.outcome == "awaiting-shadow" and "no shadow evidence" in decision.reason
    promotion.name_challenger(settings.registry_uri, settings.model_name, better, decision.reason)

    write_scene(storage.join(settings.input_uri, "scene.tif"), 5)
    out = _run_champion(settings, "exec-1")
    _run_shadow(settings, "exec-1", out)
    with transactions.session(settings) as s:
        evidence = repository.shadow_evidence(s, champion, better)
    strict = promotion.ShadowCriteria(min_scenes=1, min_agreement=1.0, max_area_shift=1.0)
    assert evidence["agreement"] < 1.0  # two random models disagree somewhere: the floor holds it back
    held = promotion.promote_if_better(
        settings.registry_uri, settings.model_name, better, shadow=strict, evidence=evidence
    )
    assert held.outcome == "awaiting-shadow" and "agreement" in held.reason
    stale = {**evidence, "champion_version": "someone-else"}
    held = promotion.promote_if_better(
        settings.registry_uri, settings.model_name, better, shadow=criteria, evidence=stale
    )
    assert held.outcome == "awaiting-shadow" and "not champion" in held.reason
    promoted = promotion.promote_if_better(
        settings.registry_uri, settings.model_name, better, shadow=criteria, evidence=evidence
    )
    assert promoted.outcome == "promoted" and promoted.shadow["scenes"] == 1
    assert registry.champion(settings.registry_uri, settings.model_name)["version"] == better


def test_challenger_pointer_is_named_and_cleared(settings) -> None:
    champion = registry.champion(settings.registry_uri, settings.model_name)["version"]
    with pytest.raises(registry.RegistryError, match="champion"):
        promotion.name_challenger(settings.registry_uri, settings.model_name, champion, "itself")
    with pytest.raises(registry.VersionNotFoundError):
        promotion.name_challenger(settings.registry_uri, settings.model_name, "no-such-version", "x")
    version = make_challenger(settings.registry_uri)
    assert registry.challenger(settings.registry_uri, settings.model_name)["version"] == version
    assert not promotion.clear_challenger(settings.registry_uri, settings.model_name, "another")
    assert promotion.clear_challenger(settings.registry_uri, settings.model_name, version)
    assert registry.challenger(settings.registry_uri, settings.model_name) is None


@pytest.mark.slow
def test_state_machine_runs_the_shadow_maps_after_the_champions(settings) -> None:
    """The ASL on moto's interpreter with the real handlers: ShadowBlocks and ShadowScenes run the
    challenger after AssembleScenes; its COG matches the ledger's agreement."""
    from inference import handlers
    from setup.tools import local_statemachine as local

    challenger = make_challenger(settings.registry_uri)
    write_scene(storage.join(settings.input_uri, "scene.tif"), 6, size=300)
    handlers.configure(settings)
    try:
        execution = local.run_execution(settings.manifest_prefix, execution_id="sfn-shadow-1")
    finally:
        handlers.configure(None)
    assert execution.status == "SUCCEEDED", execution.error
    infer_calls = [outcome for name, outcome in execution.calls if name == "infer"]
    assert len(infer_calls) == 2 * 9  # nine blocks, each once by the champion and once in shadow
    with transactions.session(settings) as s:
        (row,) = s.query(ShadowComparison).all()
        scene = transactions.get_scene(s, row.scene_id)
        served = repository.prediction_by(s, scene, row.champion_version)
        assert row.status == ShadowStatus.compared and row.challenger_version == challenger
        champion_map, challenger_map = _read(served.class_uri), _read(row.class_uri)
        valid = (champion_map != NODATA_CLASS_ID) & (challenger_map != NODATA_CLASS_ID)
        assert row.agreement == pytest.approx(float((champion_map == challenger_map)[valid].mean()))
        run_id = repository.get_run(s, "sfn-shadow-1").id
        assert {m.name: m.value for m in repository.metrics_for(s, run_id)}["shadow_scenes"] == 1
    from inference import notify
    from setup.tools import run_local

    notice = notify.read_notice(settings, "sfn-shadow-1", "succeeded")["summary"]
    assert notice["shadow"]["scenes"] == 1 and notice["shadow"]["agreement"] == pytest.approx(
        row.agreement, abs=1e-6
    )
    text = run_local.format_summary(run_local.summarize(settings, execution))
    assert f"challenger agrees on {row.agreement:.2%} of the pixels of 1 scene(s)" in text, text

"""Naming the challenger after training and promoting it on shadow evidence from a real ledger
(SQLite here; the shadow pass that writes such evidence is tested in tests/inference/test_shadow.py)."""

from __future__ import annotations

import pytest

from core import registry
from core.config import compose
from inference import transactions
from inference.ledger import repository
from inference.settings import settings_from_config
from tests.inference.chain_fixtures import CHAMPION_EXPORT, make_champion, migrated
from tests.inference.helpers_core import tiny_export
from training import challenger, promotion


@pytest.fixture
def cfg(tmp_path):
    cfg = compose(
        [
            f"storage.registry_uri=file://{tmp_path}/registry",
            f"inference.ledger_url=sqlite:///{tmp_path}/ledger.db",
            "training.shadow.min_scenes=2",
            "training.shadow.min_agreement=0.8",
            "training.shadow.max_area_shift=0.05",
        ]
    )
    migrated(cfg.inference.ledger_url)
    make_champion(cfg.storage.registry_uri, cfg.model_name, miou=0.5)
    return cfg


def _candidate(cfg, miou: float) -> str:
    return registry.register_version(
        cfg.storage.registry_uri,
        cfg.model_name,
        tiny_export(seed=1, **CHAMPION_EXPORT),
        {"miou": miou},
        "model: tiny\n",
    )["version"]


def _decide(cfg, version: str) -> promotion.PromotionDecision:
    return challenger.promote_candidate(cfg, version)[0]


def _shadow_scene(cfg, n: int, champion: str, version: str, agreement: float, shift: float) -> None:
    """One compared scene in the ledger, as the shadow pass records it."""
    with transactions.session(settings_from_config(cfg)) as s:
        run, _ = repository.start_run(s, f"exec-{n}", model_version=champion)
        scene, _ = repository.register_scene(s, f"{n:064x}", f"file:///in/{n}.tif", 10)
        row = repository.claim_shadow(s, scene.id, champion, version, f"exec-{n}", 60.0)
        repository.record_shadow(
            s, row, pixels=1000, agreement=agreement, seconds=1.0, class_uri="file:///x.tif", run_id=run.id
        )
        repository.record_metrics(
            s, run.id, scene.id, version, [(repository.SHADOW_AREA_DELTA, "Water", shift)]
        )


def test_missed_gate_names_the_best_challenger(cfg) -> None:
    root, name = cfg.storage.registry_uri, cfg.model_name
    worse = _candidate(cfg, 0.3)
    assert _decide(cfg, worse).outcome == "challenger"
    assert registry.challenger(root, name)["version"] == worse
    worst = _candidate(cfg, 0.2)
    _decide(cfg, worst)
    assert registry.challenger(root, name)["version"] == worse  # not replaced by a weaker one
    off = compose([*_overrides(cfg), "training.shadow.name_challenger=false"])
    assert (
        challenger.after_decision(off, promotion.promote_if_better(root, name, _candidate(cfg, 0.4))) is None
    )
    assert registry.challenger(root, name)["version"] == worse


def _overrides(cfg) -> list[str]:
    return [
        f"storage.registry_uri={cfg.storage.registry_uri}",
        f"inference.ledger_url={cfg.inference.ledger_url}",
    ]


def test_a_better_candidate_waits_for_shadow_evidence_then_is_promoted(cfg) -> None:
    root, name = cfg.storage.registry_uri, cfg.model_name
    champion = registry.champion(root, name)["version"]
    better = _candidate(cfg, 0.9)
    decision = _decide(cfg, better)
    assert decision.outcome == "awaiting-shadow" and not decision.promoted
    assert registry.challenger(root, name)["version"] == better
    assert registry.champion(root, name)["version"] == champion

    _shadow_scene(cfg, 1, champion, better, agreement=0.95, shift=0.01)
    held = challenger.promote_challenger(cfg)
    assert held.outcome == "awaiting-shadow" and "1 of 2 scenes" in held.reason
    _shadow_scene(cfg, 2, champion, better, agreement=0.9, shift=0.2)  # pixel-weighted shift 0.105
    held = challenger.promote_challenger(cfg)
    assert "'Water' area shifts by 0.1050" in held.reason
    _shadow_scene(cfg, 3, champion, better, agreement=0.9, shift=-0.17)  # mean (0.01+0.2-0.17)/3
    promoted = challenger.promote_challenger(cfg)
    assert promoted.outcome == "promoted", promoted.reason
    assert promoted.shadow["scenes"] == 3 and promoted.shadow["agreement"] == pytest.approx(0.9166666)
    assert registry.champion(root, name)["version"] == better
    assert registry.challenger(root, name) is None
    with pytest.raises(registry.RegistryError, match="no challenger"):
        challenger.promote_challenger(cfg)

"""A small but complete ledger for the observability tests, written through the ledger repository.

This is the *hand-seeded* ledger: it writes the contract's metric names (see
``observability.panels.METRIC_NAMES``) with ``inference.ledger.repository`` exactly as the observe
step does. Tests that can run the real chain (``inference.steps.observe.observe``) use that instead;
this seed stays as the deterministic fixture for shapes the chain does not produce in a few
seconds (a failed run, a champion change, quarantined inputs with several reasons, a backlog).

    python -m tests.observability.seed sqlite:///outputs/demo-ledger.db   # a demo ledger
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from inference.ledger import repository as repo
from inference.ledger.db import make_engine, migrate, session_scope
from inference.ledger.models import RunStatus, SceneStatus

CLASSES = ("Water", "Tree Canopy", "Low Vegetation", "Barren", "Impervious (other)", "Impervious (road)")
BANDS = ("red", "green", "blue", "nir")
REFERENCE = np.array([0.12, 0.38, 0.28, 0.04, 0.12, 0.06])
REFERENCE_BANDS = {"red": 110.0, "green": 115.0, "blue": 98.0, "nir": 139.0}
COST_USD_PER_SECOND = 0.0000166667 * 3  # ~3 GB Lambda


@dataclass
class Seeded:
    runs: dict[str, int] = field(default_factory=dict)  # execution_id -> run id
    scenes_predicted: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> count
    backlog: int = 0
    model_changes: int = 0
    shadow_scenes: int = 0


def _sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _psi(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    return float(np.sum((p - q) * np.log(p / q)))


def _js(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


def _scene_rows(fractions: np.ndarray, area: float, shift: float, rng: np.random.Generator) -> list:
    rows: list[tuple[str, str, float]] = [("area_km2", "", area)]
    for name, frac in zip(CLASSES, fractions, strict=True):
        rows += [("class_fraction", name, float(frac)), ("class_area_km2", name, float(frac * area))]
    conf = 0.86 - 0.25 * shift + rng.uniform(-0.02, 0.02)
    rows += [
        ("mean_max_softmax", "", conf),
        ("low_confidence_share", "", max(0.0, 0.9 - conf)),
        ("entropy", "", 0.45 + 0.6 * shift),
        ("psi_class", "", _psi(fractions, REFERENCE)),
        ("js_class", "", _js(fractions, REFERENCE)),
    ]
    for band, mean in REFERENCE_BANDS.items():
        current = mean * (1 + 0.25 * shift) + rng.uniform(-2, 2)
        hist_ref = np.array([0.2, 0.3, 0.3, 0.2])
        hist_cur = np.clip(hist_ref + shift * np.array([-0.15, -0.1, 0.1, 0.15]), 0.01, None)
        hist_cur /= hist_cur.sum()
        rows += [
            ("band_mean", band, current),
            ("band_std", band, 40.0 + 5 * shift),
            ("psi_band", band, _psi(hist_cur, hist_ref)),
            ("js_band", band, _js(hist_cur, hist_ref)),
        ]
    psi_max = max(v for n, _, v in rows if n in ("psi_class", "psi_band"))
    rows.append(("drift_flag", "", 1.0 if psi_max > 0.2 else 0.0))
    return rows


def _run_rows(scene_rows: list[list], seconds: float) -> list:
    """Run-level rows: area-weighted means of the scene rows plus the run totals."""
    areas = np.array([dict(((n, k), v) for n, k, v in rows)[("area_km2", "")] for rows in scene_rows])
    weights = areas / areas.sum()
    keys = [(n, k) for n, k, _ in scene_rows[0]]
    out = []
    for name, key in keys:
        values = np.array([dict(((n, k), v) for n, k, v in rows)[(name, key)] for rows in scene_rows])
        if name in ("area_km2", "class_area_km2"):
            out.append((name, key, float(values.sum())))
        elif name == "drift_flag":
            out.append((name, key, float(values.max())))
        else:
            out.append((name, key, float((values * weights).sum())))
    cost = seconds * COST_USD_PER_SECOND
    out += [
        ("scenes_predicted", "", float(len(scene_rows))),
        ("seconds_total", "", seconds),
        ("cost_usd", "", cost),
        ("cost_usd_per_km2", "", cost / float(areas.sum())),
    ]
    out += [("reference_class_fraction", name, float(f)) for name, f in zip(CLASSES, REFERENCE, strict=True)]
    return out


#: Runs whose scenes a challenger also predicted in shadow: execution -> challenger version.
SHADOW = {"exec-002": "v2", "exec-004": "v3"}


def _shadow_scene(session, run_id: int, scene_id: int, champion: str, challenger: str, rng, at) -> tuple:
    """One compared shadow scene (as inference.shadow records it); (pixels, agreement, seconds)."""
    pixels, agreement, seconds = int(rng.integers(50_000, 90_000)), float(rng.uniform(0.8, 0.95)), 30.0
    row = repo.claim_shadow(session, scene_id, champion, challenger, "exec-shadow", 0.0)
    repo.record_shadow(
        session, row, pixels=pixels, agreement=agreement, seconds=seconds,
        class_uri=f"s3://out/_shadow/{scene_id}/{challenger}/classes.tif", run_id=run_id, compared_at=at,
    )  # fmt: skip
    deltas = rng.uniform(-0.02, 0.02, len(CLASSES))
    rows = [(repo.SHADOW_IOU, name, float(rng.uniform(0.6, 0.95))) for name in CLASSES]
    rows += [
        (repo.SHADOW_AREA_DELTA, name, float(d - deltas.mean()))
        for name, d in zip(CLASSES, deltas, strict=True)
    ]
    repo.record_metrics(session, run_id, scene_id, challenger, rows)
    return pixels, agreement, seconds


def seed_ledger(url: str, *, now: datetime | None = None, migrate_first: bool = True) -> Seeded:
    """Migrate ``url`` and write four runs (one failed, a champion change), scenes, metrics."""
    now = now or datetime.now(UTC)
    if migrate_first:
        migrate(url)
    engine = make_engine(url)
    rng = np.random.default_rng(7)
    out = Seeded()
    plan = [
        # execution, days ago, model, status, scenes predicted, drift shift, quarantined reasons
        ("exec-001", 4.0, "v1", RunStatus.succeeded, 2, 0.0, []),
        ("exec-002", 3.0, "v1", RunStatus.succeeded, 1, 0.1, ["band_count"]),
        ("exec-003", 2.0, "v1", RunStatus.failed, 0, 0.0, []),
        # Its execution died mid-run: the next process closed it with what it had done.
        ("exec-003b", 1.5, "v1", RunStatus.abandoned, 1, 0.0, []),
        ("exec-004", 1.0, "v2", RunStatus.succeeded, 2, 1.0, ["missing_crs", "band_count"]),
    ]
    counter = 0
    try:
        with session_scope(engine) as session:
            for execution_id, days, model, status, n_pred, shift, reasons in plan:
                started = now - timedelta(days=days)
                run, _ = repo.start_run(session, execution_id, model_version=model, started_at=started)
                out.runs[execution_id] = run.id
                scene_rows, shadow_rows = [], []
                for _ in range(n_pred):
                    counter += 1
                    sha = _sha(f"scene-{counter}")
                    area = float(rng.uniform(0.5, 2.0))
                    scene, _ = repo.register_scene(
                        session, sha, f"s3://in/scene-{counter}.tif", 1000 + counter, area_km2=area
                    )
                    repo.transition(session, scene, SceneStatus.validated)
                    repo.claim_for_prediction(session, scene, "exec-1", 0.0)
                    t0 = started + timedelta(seconds=30 * counter)
                    repo.record_prediction(
                        session, scene, model, input_sha256=sha, class_uri=f"s3://out/{counter}.tif",
                        started_at=t0, finished_at=t0 + timedelta(seconds=40), run_id=run.id,
                    )  # fmt: skip
                    mix = REFERENCE + shift * np.array([0.10, -0.25, 0.0, 0.05, 0.05, 0.05])
                    fractions = np.clip(mix + rng.uniform(-0.01, 0.01, len(mix)), 0.001, None)
                    fractions /= fractions.sum()
                    rows = _scene_rows(fractions, area, shift, rng)
                    repo.record_metrics(session, run.id, scene.id, model, rows)
                    scene_rows.append(rows)
                    out.scenes_predicted += 1
                    if challenger := SHADOW.get(execution_id):
                        shadow_rows.append(
                            _shadow_scene(
                                session, run.id, scene.id, model, challenger, rng, t0 + timedelta(seconds=60)
                            )
                        )
                for reason in reasons:
                    counter += 1
                    scene, _ = repo.register_scene(
                        session, _sha(f"bad-{counter}"), f"s3://in/bad-{counter}.tif", 10
                    )
                    repo.quarantine(session, scene, reason, f"rejected by validate_naip: {reason}")
                    out.quarantined[reason] = out.quarantined.get(reason, 0) + 1
                seconds = 120.0 + 60 * n_pred
                if scene_rows and status != RunStatus.abandoned:  # observe never ran for an abandoned run
                    repo.record_metrics(session, run.id, None, model, _run_rows(scene_rows, seconds))
                if shadow_rows:
                    pixels = sum(p for p, _, _ in shadow_rows)
                    repo.record_metrics(session, run.id, None, model, [
                        ("shadow_scenes", "", float(len(shadow_rows))),
                        ("shadow_agreement", "", sum(p * a for p, a, _ in shadow_rows) / pixels),
                        ("shadow_seconds", "", sum(t for _, _, t in shadow_rows)),
                    ])  # fmt: skip
                    out.shadow_scenes += len(shadow_rows)
                repo.finish_run(
                    session, execution_id, status=status, finished_at=started + timedelta(seconds=seconds),
                    error={
                        RunStatus.failed: "States.TaskFailed: infer Lambda timed out",
                        RunStatus.abandoned: "abandoned: no progress since its deadline",
                    }.get(status),
                    scenes_discovered=n_pred + len(reasons), scenes_predicted=n_pred,
                    scenes_quarantined=len(reasons), scenes_failed=1 if status == RunStatus.failed else 0,
                )  # fmt: skip
            # The backlog: one validated, one failed (attempts left), one freshly discovered.
            for label, target in (
                ("validated", SceneStatus.validated),
                ("failed", SceneStatus.failed),
                ("new", None),
            ):
                scene, _ = repo.register_scene(
                    session, _sha(f"todo-{label}"), f"s3://in/todo-{label}.tif", 10
                )
                if target is SceneStatus.validated:
                    repo.transition(session, scene, target)
                elif target is SceneStatus.failed:
                    repo.fail(session, scene, "infer_error", "CUDA out of memory")
                out.backlog += 1
        out.model_changes = 2  # v1 (first) and v2
    finally:
        engine.dispose()
    return out


if __name__ == "__main__":  # pragma: no cover - a demo helper
    seeded = seed_ledger(sys.argv[1])
    print(seeded)


def seed_with_chain(ledger_url: str, root_uri: str) -> dict[str, int]:
    """Seed ``ledger_url`` by running the real Lambda handlers (process → infer → assemble → observe).

    A tiny random champion (``tests.inference.chain_fixtures``) predicts small synthetic scenes:
    run 1 with champion v1 (two good scenes, one corrupt input quarantined), then a better model
    is promoted and run 2 predicts a new scene with v2 (a champion change) and, in shadow, with a
    challenger that missed the gate, then run 3 discovers a
    scene and fails through the failure handler before inferring (a failed run and a backlog).
    Returns execution id -> number of scenes each run predicted.
    """
    from core import storage
    from inference import handlers
    from inference.handlers import assemble as assemble_handler
    from inference.handlers import failure as failure_handler
    from inference.handlers import infer as infer_handler
    from inference.handlers import observe as observe_handler
    from inference.handlers import process as process_handler
    from tests.inference.chain_fixtures import (
        chain_settings,
        make_challenger,
        make_champion,
        migrated,
        write_bad,
        write_scene,
    )

    settings = chain_settings(root_uri, migrated(ledger_url))
    make_champion(settings.registry_uri, miou=0.5)
    size = 128
    write_scene(storage.join(settings.input_uri, "a.tif"), seed=1, size=size)
    write_scene(storage.join(settings.input_uri, "b.tif"), seed=2, size=size)
    write_bad(storage.join(settings.input_uri, "bad.tif"), "band_count")
    predicted: dict[str, int] = {}
    handlers.configure(settings)
    try:

        def full_run(execution_id: str) -> None:
            manifest = process_handler.handler({"execution_id": execution_id})
            for item in json.loads(storage.read_text(manifest["manifest_uri"])):
                infer_handler.handler({"execution_id": execution_id, "item": item})
            for item in json.loads(storage.read_text(manifest["scenes_uri"])):
                assemble_handler.handler({"execution_id": execution_id, "item": item})
            if manifest["challenger_version"]:  # the shadow Maps, as the state machine runs them
                shadow = {"shadow": True, "challenger_version": manifest["challenger_version"]}
                for item in json.loads(storage.read_text(manifest["manifest_uri"])):
                    infer_handler.handler({"execution_id": execution_id, "item": item, **shadow})
                for item in json.loads(storage.read_text(manifest["scenes_uri"])):
                    assemble_handler.handler({"execution_id": execution_id, "item": item, **shadow})
            predicted[execution_id] = observe_handler.handler({"execution_id": execution_id})["scenes"]

        full_run("chain-001")
        make_champion(settings.registry_uri, miou=0.9)  # a better model: the champion changes
        make_challenger(settings.registry_uri, miou=0.8)  # and one that missed the gate, in shadow
        write_scene(storage.join(settings.input_uri, "c.tif"), seed=3, size=size)
        full_run("chain-002")
        write_scene(storage.join(settings.input_uri, "d.tif"), seed=4, size=size)
        process_handler.handler({"execution_id": "chain-003"})
        failure_handler.handler(
            {"execution_id": "chain-003", "error": {"Error": "States.Timeout", "Cause": "infer timed out"}}
        )
    finally:
        handlers.configure(None)
    return predicted

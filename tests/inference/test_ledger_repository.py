"""Repository behaviour on a migrated ledger, on both Postgres and SQLite."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger import db
from inference.ledger import repository as repo
from inference.ledger.models import (
    Block,
    BlockStatus,
    Metric,
    Prediction,
    Run,
    RunStatus,
    Scene,
    SceneSource,
    SceneStatus,
)

INJECTION = "s3://bucket/x'); DROP TABLE scenes; --\" OR 1=1 %s %(x)s :param"


POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def migrated_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``alembic upgrade head`` per backend and module; tests then share it, emptied between.

    (Creating and migrating a Postgres database per test costs ~0.8 s; the migration tests use
    the per-test ``postgres_url`` fixture, where a fresh database is the point.)
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        db.migrate(url)
        yield url
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated identifier, not input
    except sa.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        db.migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(migrated_url: str) -> Iterator[sa.Engine]:
    """An engine on the migrated ledger, emptied first (children before parents)."""
    engine = db.make_engine(migrated_url)
    with engine.begin() as conn:
        for table in (Metric, Prediction, Block, SceneSource, Run, Scene):
            conn.execute(sa.delete(table))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    with db.session_scope(engine) as session:
        yield session


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_scene(session: Session, name: str = "a", status: SceneStatus = SceneStatus.validated) -> Scene:
    scene, created = repo.register_scene(session, sha(name), f"s3://bucket/{name}.tif", 1234)
    assert created
    path = {
        SceneStatus.discovered: [],
        SceneStatus.validated: [SceneStatus.validated],
        SceneStatus.predicting: [SceneStatus.validated, SceneStatus.predicting],
    }[status]
    for step in path:
        repo.transition(session, scene, step)
    return scene


def count(session: Session, model: type) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()


def predict(
    session: Session, scene: Scene, model_version: str = "v1", run_id: int | None = None
) -> Prediction:
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    return repo.record_prediction(
        session,
        scene,
        model_version,
        input_sha256=scene.sha256,
        class_uri=f"s3://out/{scene.id}/class.tif",
        confidence_uri=f"s3://out/{scene.id}/conf.tif",
        stac_uri=f"s3://out/{scene.id}/item.json",
        started_at=start,
        finished_at=start + timedelta(seconds=2.5),
        run_id=run_id,
    )


# --- scenes ---------------------------------------------------------------------------------


def test_register_same_sha256_twice_is_one_scene(session: Session) -> None:
    first, created = repo.register_scene(
        session,
        sha("tile"),
        "s3://bucket/in/tile.tif",
        4096,
        etag="e1",
        width=512,
        height=256,
        crs="EPSG:32618",
        bounds=(500000.0, 4000000.0, 500512.0, 4000256.0),
        bbox_wgs84=[-75.0, 36.1, -74.99, 36.11],
        area_km2=0.131,
    )
    assert created
    assert (first.status, first.attempts, first.error) == (SceneStatus.discovered, 0, None)
    assert first.bbox_wgs84 == [-75.0, 36.1, -74.99, 36.11]
    assert first.discovered_at.tzinfo is not None

    # A duplicate upload of the same bytes under another key.
    again, created_again = repo.register_scene(session, sha("tile").upper(), "s3://bucket/copy.tif", 4096)
    assert not created_again
    assert again.id == first.id
    assert again.source_uri == "s3://bucket/in/tile.tif"  # the first URI it was seen at
    assert count(session, Scene) == 1
    # Both keys are known, so a re-listing can skip them without re-hashing.
    assert repo.known_source(session, "s3://bucket/copy.tif").id == first.id
    assert repo.known_source(session, "s3://bucket/in/tile.tif", etag="e1").id == first.id
    assert repo.known_source(session, "s3://bucket/in/tile.tif", etag="changed") is None
    assert repo.known_source(session, "s3://bucket/never.tif") is None


def test_register_rejects_bad_input(session: Session) -> None:
    with pytest.raises(ValueError, match="sha256"):
        repo.register_scene(session, "etag-not-a-hash", "s3://b/k", 1)
    with pytest.raises(ValueError, match="bounds"):
        repo.register_scene(session, sha("x"), "s3://b/k", 1, bounds=(1.0, 1.0, 0.0, 0.0))


def test_describe_scene_fills_metadata(session: Session) -> None:
    scene = new_scene(session, status=SceneStatus.discovered)
    repo.describe_scene(session, scene, width=10, height=20, crs="EPSG:32618", bounds=(0, 0, 10, 20))
    assert (scene.width, scene.height, scene.crs, scene.maxy) == (10, 20, "EPSG:32618", 20.0)
    assert scene.bbox_wgs84 is None
    # JSON None is SQL NULL (not the JSON literal 'null'), so IS NULL finds it.
    assert session.execute(sa.select(sa.func.count()).where(Scene.bbox_wgs84.is_(None))).scalar_one() == 1


def test_legal_transitions_and_idempotent_repeat(session: Session) -> None:
    scene = new_scene(session, status=SceneStatus.discovered)
    repo.transition(session, scene, SceneStatus.validated)
    repo.transition(session, scene, SceneStatus.validated)  # same again: a no-op
    assert scene.status == SceneStatus.validated
    repo.transition(session, scene, SceneStatus.predicting)
    repo.transition(session, scene, SceneStatus.predicting)
    assert scene.attempts == 1  # the repeat did not count another attempt
    repo.fail(session, scene, "infer_timeout", "Lambda timed out")
    assert (scene.status, scene.error, scene.error_message) == (
        SceneStatus.failed,
        "infer_timeout",
        "Lambda timed out",
    )
    repo.transition(session, scene, SceneStatus.predicting)
    assert scene.attempts == 2
    assert scene.error is None  # cleared when the scene moves on


def test_illegal_transition_raises_clear_error(session: Session) -> None:
    scene = new_scene(session, status=SceneStatus.discovered)
    with pytest.raises(repo.IllegalTransition, match="'discovered' to 'predicted'") as info:
        repo.transition(session, scene, SceneStatus.predicted)
    assert info.value.current == SceneStatus.discovered
    assert "validated" in str(info.value)  # names what is allowed
    repo.quarantine(session, scene, "corrupt_tiff", "not a TIFF")
    with pytest.raises(repo.IllegalTransition):
        repo.transition(session, scene, SceneStatus.predicting)
    with pytest.raises(ValueError, match="reason"):
        repo.transition(session, new_scene(session, "b"), SceneStatus.failed)
    assert scene.status == SceneStatus.quarantined


def test_transition_decides_on_database_state(engine: sa.Engine) -> None:
    """A stale in-memory copy cannot overwrite a status another worker already changed."""
    with db.session_scope(engine) as s1:
        scene = new_scene(s1, status=SceneStatus.discovered)
    with db.session_scope(engine) as s2:
        repo.quarantine(s2, s2.get(Scene, scene.id), "bad_band_count", "3 bands")
    with db.session_scope(engine) as s3:
        stale = s3.merge(scene, load=False)  # still says 'discovered'
        with pytest.raises(repo.IllegalTransition, match="'quarantined' to 'validated'"):
            repo.transition(s3, stale, SceneStatus.validated)


def test_quarantined_lists_reasons_verbatim(session: Session) -> None:
    ok = new_scene(session, "ok")
    bad = new_scene(session, "bad", status=SceneStatus.discovered)
    nasty, _ = repo.register_scene(session, sha("nasty"), INJECTION, 7)
    repo.quarantine(session, bad, "wrong_dtype", "expected uint8, got float32")
    repo.quarantine(session, nasty, "missing_crs", INJECTION)
    listed = repo.quarantined(session)
    assert [(s.id, s.error) for s in listed] == [(bad.id, "wrong_dtype"), (nasty.id, "missing_crs")]
    assert listed[1].source_uri == INJECTION
    assert listed[1].error_message == INJECTION
    assert ok.status == SceneStatus.validated
    # The quarantine view serves the dashboards the same rows.
    rows = session.execute(
        sa.text("SELECT scene_id, reason, message FROM quarantine ORDER BY scene_id")
    ).all()
    assert [tuple(r) for r in rows] == [
        (bad.id, "wrong_dtype", "expected uint8, got float32"),
        (nasty.id, "missing_crs", INJECTION),
    ]
    assert count(session, Scene) == 3  # the "DROP TABLE" did nothing


# --- predictions ----------------------------------------------------------------------------


def test_record_prediction_twice_is_one_row(session: Session) -> None:
    run, _ = repo.start_run(session, "exec-1", model_version="v1")
    scene = new_scene(session, status=SceneStatus.predicting)
    first = predict(session, scene, run_id=run.id)
    assert scene.status == SceneStatus.predicted
    assert first.seconds == pytest.approx(2.5)
    second = predict(session, scene, run_id=run.id)
    assert second.id == first.id
    assert count(session, Prediction) == 1
    # A new champion adds a second row for the same scene, not a replacement.
    repo.transition(session, scene, SceneStatus.predicting)
    predict(session, scene, "v2")
    assert sorted(p.model_version for p in repo.predictions_for(session, scene)) == ["v1", "v2"]


def test_record_prediction_needs_a_claimed_scene(session: Session) -> None:
    scene = new_scene(session, status=SceneStatus.discovered)
    with pytest.raises(repo.IllegalTransition):
        predict(session, scene)


def test_scenes_to_predict_finishes_crashed_work(engine: sa.Engine) -> None:
    with db.session_scope(engine) as s:
        done = new_scene(s, "done", status=SceneStatus.predicting)
        predict(s, done)
        crashed = new_scene(s, "crashed")
        repo.claim_for_prediction(s, crashed, "exec-1", 0.0)  # ...and the Lambda died here
        waiting = new_scene(s, "waiting")
        flaky = new_scene(s, "flaky")
        repo.claim_for_prediction(s, flaky, "exec-1", 0.0)
        repo.fail(s, flaky, "oom", "out of memory")
        new_scene(s, "raw", status=SceneStatus.discovered)
    with db.session_scope(engine) as s:  # the re-run
        todo = repo.scenes_to_predict(s, "v1")
        assert [x.id for x in todo] == [crashed.id, waiting.id, flaky.id]
        # A concurrent execution's fresh claim is left alone when asked to.
        old = datetime.now(UTC) - timedelta(hours=1)
        assert crashed.id not in [x.id for x in repo.scenes_to_predict(s, "v1", stuck_before=old)]
        for scene in todo:
            repo.claim_for_prediction(s, scene, "exec-1", 0.0)
            predict(s, scene)
    with db.session_scope(engine) as s:
        assert repo.scenes_to_predict(s, "v1") == []
        assert count(s, Prediction) == 4


def test_scene_that_keeps_crashing_runs_out_of_attempts(session: Session) -> None:
    scene = new_scene(session)
    for attempt in range(1, 4):  # one execution after another takes it, and its Lambda dies
        assert [s.id for s in repo.scenes_to_predict(session, "v1", max_attempts=3)] == [scene.id]
        repo.claim_for_prediction(session, scene, f"exec-{attempt}", 0.0)
        repo.claim_for_prediction(session, scene, f"exec-{attempt}", 0.0)  # its next block: no new attempt
        assert scene.attempts == attempt
    assert repo.scenes_to_predict(session, "v1", max_attempts=3) == []


# --- runs -----------------------------------------------------------------------------------


def test_start_run_twice_is_one_row(session: Session) -> None:
    arn = "arn:aws:states:us-east-1:123456789012:execution:landcover:2026-01-01T00-00-00"
    run, created = repo.start_run(session, arn, model_version="v1")
    again, created_again = repo.start_run(session, arn, model_version="v1")
    assert created and not created_again
    assert again.id == run.id
    assert count(session, Run) == 1
    repo.update_run(session, arn, scenes_discovered=5, scenes_quarantined=1)
    finished = repo.finish_run(session, arn, scenes_predicted=4, scenes_failed=0)
    assert finished.status == RunStatus.succeeded
    assert (finished.scenes_discovered, finished.scenes_quarantined, finished.scenes_predicted) == (5, 1, 4)
    assert finished.finished_at is not None and finished.finished_at.tzinfo is not None
    with pytest.raises(TypeError, match="unknown run counts"):
        repo.update_run(session, arn, scenes_exploded=1)


def test_fail_run_catch_path(session: Session) -> None:
    run, _ = repo.start_run(session, "exec-catch")
    failed = repo.fail_run(session, "exec-catch", '{"Error": "States.TaskFailed", "Cause": "OOM"}')
    assert failed.id == run.id
    assert (failed.status, failed.error) == (
        RunStatus.failed,
        '{"Error": "States.TaskFailed", "Cause": "OOM"}',
    )
    # A failure before start_run is still recorded.
    early = repo.fail_run(session, "exec-early", INJECTION)
    assert (early.status, early.error) == (RunStatus.failed, INJECTION)
    # A redrive of the failed execution reopens its run.
    reopened, created = repo.start_run(session, "exec-catch")
    assert not created
    assert (reopened.status, reopened.error, reopened.finished_at) == (RunStatus.running, None, None)
    with pytest.raises(repo.RunNotFound, match="exec-nope"):
        repo.finish_run(session, "exec-nope")


def test_model_changes_view(session: Session) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, version in enumerate(["v1", "v1", "v2", "v2", "v1"]):
        repo.start_run(session, f"exec-{i}", model_version=version, started_at=t0 + timedelta(days=i))
    changes = repo.model_changes(session)
    assert [(c["execution_id"], c["previous_model_version"], c["model_version"]) for c in changes] == [
        ("exec-0", None, "v1"),
        ("exec-2", "v1", "v2"),
        ("exec-4", "v2", "v1"),
    ]


# --- metrics --------------------------------------------------------------------------------


def test_metrics_upsert_run_level_and_scene_level(session: Session) -> None:
    run, _ = repo.start_run(session, "exec-m", model_version="v1")
    scene = new_scene(session)
    run_rows = [("psi_class", "", 0.1), ("drift_flag", None, 0.0)]
    scene_rows = [("class_fraction", "water", 0.25), ("class_fraction", "tree canopy", 0.5)]
    for _ in range(2):  # observe re-run
        assert repo.record_metrics(session, run.id, None, "v1", run_rows) == 2
        assert repo.record_metrics(session, run.id, scene.id, "v1", scene_rows) == 2
    assert count(session, Metric) == 4

    # Values are updated in place, not added.
    repo.record_metrics(session, run.id, None, "v1", [("psi_class", "", 0.3)])
    repo.record_metrics(session, run.id, scene.id, "v1", [("class_fraction", "water", 0.75)])
    assert count(session, Metric) == 4
    session.expire_all()
    run_level = {(m.name, m.key): m.value for m in repo.metrics_for(session, run.id)}
    assert run_level == {("psi_class", ""): pytest.approx(0.3), ("drift_flag", ""): 0.0}
    scene_level = {(m.name, m.key): m.value for m in repo.metrics_for(session, run.id, scene.id)}
    assert scene_level == {("class_fraction", "water"): 0.75, ("class_fraction", "tree canopy"): 0.5}

    # The same key twice in one batch: last wins (Postgres would refuse to touch a row twice).
    repo.record_metrics(session, run.id, None, "v1", [("entropy", "", 1.0), ("entropy", "", 2.0)])
    assert {m.name: m.value for m in repo.metrics_for(session, run.id)}["entropy"] == 2.0
    assert repo.record_metrics(session, run.id, None, "v1", []) == 0


def test_metrics_reject_non_finite_values(session: Session) -> None:
    run, _ = repo.start_run(session, "exec-nan")
    with pytest.raises(ValueError, match="finite"):
        repo.record_metrics(session, run.id, None, "v1", [("psi_band", "nir", float("nan"))])


def test_unique_indexes_hold_without_the_repository(session: Session) -> None:
    """The database itself refuses duplicates, even from a writer that skips the upsert."""
    run, _ = repo.start_run(session, "exec-raw")
    row = {
        "run_id": run.id,
        "scene_id": None,
        "model_version": "v1",
        "name": "entropy",
        "key": "",
        "value": 1.0,
    }
    session.execute(sa.insert(Metric), [{**row, "recorded_at": datetime.now(UTC)}])
    with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
        session.execute(sa.insert(Metric), [{**row, "recorded_at": datetime.now(UTC)}])


# --- leases and abandoned runs ----------------------------------------------------------------


def test_a_live_lease_is_never_taken_and_an_expired_one_is_taken_once(session: Session) -> None:
    scene = new_scene(session)
    repo.claim_for_prediction(session, scene, "exec-a", lease_s=600)
    assert (scene.lease_owner, scene.attempts) == ("exec-a", 1)
    with pytest.raises(repo.LeaseHeld) as held:
        repo.claim_for_prediction(session, scene, "exec-b", lease_s=600)
    assert held.value.owner == "exec-a" and scene.attempts == 1
    assert scene.id not in [s.id for s in repo.scenes_to_predict(session, "v1")]  # live: not offered
    repo.claim_for_prediction(session, scene, "exec-a", lease_s=600)  # the owner's next block renews
    assert scene.attempts == 1
    # The lease runs out (its Lambda died): offered again, taken over once, counted once.
    session.execute(
        sa.update(Scene)
        .where(Scene.id == scene.id)
        .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    assert [s.id for s in repo.scenes_to_predict(session, "v1")] == [scene.id]
    repo.claim_for_prediction(session, scene, "exec-b", lease_s=600)
    assert (scene.lease_owner, scene.attempts) == ("exec-b", 2)
    # The late first owner's failure does not end the taker's live attempt ...
    repo.fail_attempt(session, scene, "exec-a", "Timeout", "late")
    assert scene.status == SceneStatus.predicting and scene.lease_owner == "exec-b"
    # ... and the first prediction recorded wins; the second is a no-op that keeps the first run.
    run_a, _ = repo.start_run(session, "exec-a")
    run_b, _ = repo.start_run(session, "exec-b")
    first = predict(session, scene, run_id=run_b.id)
    again = predict(session, scene, run_id=run_a.id)
    assert again.id == first.id and again.run_id == run_b.id
    assert scene.status == SceneStatus.predicted and scene.lease_owner is None
    assert (repo.predicted_by_run(session, run_a.id), repo.predicted_by_run(session, run_b.id)) == (0, 1)


def test_a_late_attempt_may_still_record_after_a_takeover_failed(session: Session) -> None:
    scene = new_scene(session)
    repo.claim_for_prediction(session, scene, "exec-b", lease_s=600)
    repo.fail_attempt(session, scene, "exec-b", "OSError", "disk full")
    assert scene.status == SceneStatus.failed
    predict(session, scene)  # exec-a, whose lease had expired, finished after all
    assert scene.status == SceneStatus.predicted


def test_runs_past_their_deadline_are_abandoned_with_what_they_did(session: Session) -> None:
    now = datetime.now(UTC)
    stale, _ = repo.start_run(
        session, "exec-stale", model_version="v1", deadline_at=now - timedelta(seconds=5)
    )
    repo.start_run(session, "exec-live", model_version="v1", deadline_at=now + timedelta(hours=1))
    scene = new_scene(session)
    repo.claim_for_prediction(session, scene, "exec-stale", lease_s=600)
    predict(session, scene, run_id=stale.id)
    closed = repo.abandon_stale_runs(session)
    assert [r.execution_id for r in closed] == ["exec-stale"]
    stale = repo.get_run(session, "exec-stale")
    assert stale.status == RunStatus.abandoned and stale.scenes_predicted == 1 and stale.finished_at
    assert "abandoned" in stale.error
    assert repo.get_run(session, "exec-live").status == RunStatus.running
    assert repo.abandon_stale_runs(session) == []  # closing is done once
    # Progress moves a deadline forward, never back; a redrive reopens an abandoned run.
    repo.touch_run(session, "exec-live", now + timedelta(hours=2))
    repo.touch_run(session, "exec-live", now)
    assert repo.get_run(session, "exec-live").deadline_at == now + timedelta(hours=2)
    reopened, created = repo.start_run(session, "exec-stale", deadline_at=now + timedelta(hours=1))
    assert not created and reopened.status == RunStatus.running


# --- blocks -------------------------------------------------------------------------------------


def _rows(n: int) -> list[dict]:
    return [
        {"block_index": i, "row_off": 0, "col_off": 100 * i, "height": 100, "width": 100} for i in range(n)
    ]


def test_blocks_are_planned_once_and_a_block_done_twice_is_a_no_op(session: Session) -> None:
    scene = new_scene(session)
    run_a, _ = repo.start_run(session, "exec-a")
    run_b, _ = repo.start_run(session, "exec-b")
    blocks = repo.plan_blocks(session, scene, "v1", 2, _rows(3))
    assert [b.block_index for b in blocks] == [0, 1, 2] and {b.block_chips for b in blocks} == {2}
    # A re-run planning with another block size keeps the first plan (and what it has done).
    again = repo.plan_blocks(session, scene, "v1", 5, _rows(1))
    assert [b.id for b in again] == [b.id for b in blocks] and {b.block_chips for b in again} == {2}
    assert repo.plan_blocks(session, scene, "v2", 5, _rows(1))[0].block_chips == 5  # per model version

    first = blocks[0]
    repo.claim_block(session, first)
    assert (first.status, first.attempts) == (BlockStatus.predicting, 1)
    t0 = datetime.now(UTC)
    done = {"output_uri": "s3://b/0.npz", "started_at": t0, "finished_at": t0, "seconds": 1.5}
    assert repo.record_block(session, first, run_id=run_a.id, **done)
    assert not repo.record_block(session, first, run_id=run_b.id, **{**done, "seconds": 9.0})
    assert (first.status, first.run_id, first.seconds) == (BlockStatus.predicted, run_a.id, 1.5)
    repo.claim_block(session, first)  # a redelivered item cannot reopen it
    repo.fail_block(session, first, "Late", "a late failure")
    assert (first.status, first.attempts) == (BlockStatus.predicted, 1)
    assert repo.blocks_of_run(session, run_a.id) == 1 and repo.blocks_of_run(session, run_b.id) == 0


def test_only_missing_or_failed_blocks_with_attempts_left_are_redone(session: Session) -> None:
    scene = new_scene(session)
    done, failed, crashed, spent, fresh = repo.plan_blocks(session, scene, "v1", 1, _rows(5))
    t0 = datetime.now(UTC)
    repo.claim_block(session, done)
    repo.record_block(session, done, output_uri="u", started_at=t0, finished_at=t0, seconds=1.0, run_id=None)
    repo.claim_block(session, failed)
    repo.fail_block(session, failed, "OSError", "disk full")
    repo.claim_block(session, crashed)  # ... and the Lambda died
    for _ in range(3):
        repo.claim_block(session, spent)
        repo.fail_block(session, spent, "MemoryError")
    todo = repo.blocks_to_predict(repo.blocks_of(session, scene.id, "v1"), max_attempts=3)
    assert [b.block_index for b in todo] == [failed.block_index, crashed.block_index, fresh.block_index]


def test_an_executions_blocks_claim_their_scene_concurrently(engine: sa.Engine) -> None:
    # Eight infer calls of one execution start on the same scene at once: every one gets the
    # claim (the first takes it, the rest renew the lease), and it counts as one attempt.
    import threading

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises writers; the race needs concurrent transactions (Postgres)")
    with db.session_scope(engine) as s:
        scene_id = new_scene(s).id
    barrier, errors = threading.Barrier(8), []

    def claim() -> None:
        barrier.wait()
        try:
            with db.session_scope(engine) as s:
                repo.claim_for_prediction(s, s.get(Scene, scene_id), "exec-1", lease_s=600)
        except Exception as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session_scope(engine) as s:
        scene = s.get(Scene, scene_id)
        assert (scene.status, scene.lease_owner, scene.attempts) == (SceneStatus.predicting, "exec-1", 1)

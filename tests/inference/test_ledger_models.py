"""The ledger's ORM models: conventions, types and the status-transition table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from inference.ledger import db
from inference.ledger.models import (
    ALLOWED_TRANSITIONS,
    Base,
    Metric,
    Prediction,
    Run,
    RunStatus,
    Scene,
    SceneStatus,
)


@pytest.fixture
def session(tmp_path) -> Iterator[Session]:
    """A SQLite ledger built straight from the models (the migrations are tested elsewhere)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(engine)
    try:
        with db.session_factory(engine)() as session:  # tests commit (or fail) themselves
            yield session
    finally:
        engine.dispose()


def make_scene(**overrides: object) -> Scene:
    fields = {"sha256": "ab" * 32, "source_uri": "file:///x.tif", "size_bytes": 10, **overrides}
    return Scene(**fields)


def test_transition_table_is_complete_and_closed() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(SceneStatus)
    for source, targets in ALLOWED_TRANSITIONS.items():
        assert source not in targets, "staying put is a no-op, not a listed transition"
        assert targets <= set(SceneStatus)
    # Every status is reachable from 'discovered'.
    reached, frontier = {SceneStatus.discovered}, [SceneStatus.discovered]
    while frontier:
        for nxt in ALLOWED_TRANSITIONS[frontier.pop()] - reached:
            reached.add(nxt)
            frontier.append(nxt)
    assert reached == set(SceneStatus)
    assert SceneStatus.predicted not in ALLOWED_TRANSITIONS[SceneStatus.discovered]
    assert ALLOWED_TRANSITIONS[SceneStatus.quarantined] == {SceneStatus.discovered}


def test_every_constraint_and_index_is_named_by_convention() -> None:
    for table in Base.metadata.sorted_tables:
        names = [c.name for c in table.constraints] + [i.name for i in table.indexes]
        assert all(names), f"unnamed constraint on {table.name}"
        for constraint in table.constraints:
            prefix = {
                sa.PrimaryKeyConstraint: "pk_",
                sa.UniqueConstraint: "uq_",
                sa.ForeignKeyConstraint: "fk_",
                sa.CheckConstraint: "ck_",
            }[type(constraint)]
            # CHECKs come back as conv()-wrapped names once bound to the table.
            assert str(constraint.name).startswith(prefix), constraint.name
    assert Scene.__table__.c.status.type.name == "scene_status"


def test_nullability_follows_optional() -> None:
    scenes = Scene.__table__.c
    assert not scenes.sha256.nullable and not scenes.size_bytes.nullable and not scenes.status.nullable
    assert scenes.width.nullable and scenes.crs.nullable and scenes.bbox_wgs84.nullable
    assert Prediction.__table__.c.run_id.nullable and not Prediction.__table__.c.scene_id.nullable
    assert Metric.__table__.c.scene_id.nullable and not Metric.__table__.c.run_id.nullable
    assert Run.__table__.c.finished_at.nullable and not Run.__table__.c.execution_id.nullable


def test_relationships_raise_instead_of_lazy_loading(session: Session) -> None:
    for mapper in Base.registry.mappers:
        for rel in mapper.relationships:
            assert rel.lazy == "raise", f"{mapper.class_.__name__}.{rel.key}"
    session.add(make_scene())
    session.commit()
    scene = session.execute(sa.select(Scene)).scalar_one()
    with pytest.raises(sa.exc.InvalidRequestError, match="lazy='raise'"):
        _ = scene.predictions


def test_json_is_jsonb_on_postgres_and_json_on_sqlite() -> None:
    column_type = Scene.__table__.c.bbox_wgs84.type
    assert column_type.compile(dialect=postgresql.dialect()) == "JSONB"
    assert column_type.compile(dialect=sqlite.dialect()) == "JSON"


def test_timestamps_are_aware_utc(session: Session) -> None:
    eastern = timezone(timedelta(hours=-5))
    session.add(make_scene(discovered_at=datetime(2026, 3, 1, 7, 0, tzinfo=eastern)))
    session.commit()
    session.expire_all()
    scene = session.execute(sa.select(Scene)).scalar_one()
    assert scene.discovered_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert scene.discovered_at.tzinfo == UTC
    assert scene.updated_at.tzinfo == UTC  # from the default


def test_naive_datetimes_are_rejected(session: Session) -> None:
    session.add(make_scene(discovered_at=datetime(2026, 3, 1, 7, 0)))
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        session.flush()


def test_enums_store_values_and_the_database_checks_them(session: Session) -> None:
    session.add(make_scene(status=SceneStatus.predicting))
    session.add(Run(execution_id="e", status=RunStatus.succeeded))
    session.commit()
    raw = session.execute(sa.text("SELECT status FROM scenes")).scalar_one()
    assert raw == "predicting"
    with pytest.raises(sa.exc.IntegrityError, match="CHECK"):
        session.execute(sa.text("UPDATE scenes SET status = :s"), {"s": "exploded"})


def test_sqlite_foreign_keys_are_enforced(session: Session) -> None:
    session.add(Metric(run_id=999, model_version="v1", name="entropy", key="", value=1.0))
    with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"):
        session.flush()


def test_in_memory_sqlite_keeps_one_database() -> None:
    engine = db.make_engine("sqlite://")
    Base.metadata.create_all(engine)
    with db.session_scope(engine) as session:
        session.add(make_scene())
    with db.session_scope(engine) as session:  # a second checkout sees the same database
        assert session.execute(sa.select(sa.func.count()).select_from(Scene)).scalar_one() == 1
    engine.dispose()

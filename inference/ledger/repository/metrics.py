"""Metrics: ``(name, key, value)`` of a run or of one of its scenes, upserted."""

from __future__ import annotations

import math
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import Metric, utcnow
from inference.ledger.repository.common import dialect_insert


def record_metrics(
    session: Session,
    run_id: int,
    scene_id: int | None,
    model_version: str,
    rows: Iterable[tuple[str, str | None, float]],
) -> int:
    """Upsert metrics ``(name, key, value)`` of a run (``scene_id=None``) or of one of its scenes.

    Re-running observe overwrites the values instead of adding rows. Returns the number of
    distinct metrics written. NaN and infinities are rejected: a dashboard cannot plot them and
    SQLite would silently store NaN as NULL.
    """
    latest: dict[tuple[str, str], float] = {}
    for name, key, value in rows:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} key {key!r} is {value}; only finite values are recorded")
        # Last one wins; ON CONFLICT cannot touch one row twice in a statement (Postgres errors).
        latest[(name, key or "")] = value
    if not latest:
        return 0
    now = utcnow()
    values = [
        {
            "run_id": run_id,
            "scene_id": scene_id,
            "model_version": model_version,
            "name": name,
            "key": key,
            "value": value,
            "recorded_at": now,
        }
        for (name, key), value in latest.items()
    ]
    stmt = dialect_insert(session)(Metric).values(values)
    # Pick the partial unique index that matches this batch (see Metric's docstring).
    if scene_id is None:
        target, where = ["run_id", "name", "key"], Metric.scene_id.is_(None)
    else:
        target, where = ["run_id", "scene_id", "name", "key"], Metric.scene_id.is_not(None)
    stmt = stmt.on_conflict_do_update(
        index_elements=target,
        index_where=where,
        set_={
            "value": stmt.excluded.value,
            "model_version": stmt.excluded.model_version,
            "recorded_at": stmt.excluded.recorded_at,
        },
    )
    session.execute(stmt)
    return len(values)


def metrics_for(session: Session, run_id: int, scene_id: int | None = None) -> list[Metric]:
    """A run's metrics: run-level ones when ``scene_id`` is None, else that scene's."""
    where = Metric.scene_id.is_(None) if scene_id is None else Metric.scene_id == scene_id
    stmt = sa.select(Metric).where(Metric.run_id == run_id, where).order_by(Metric.name, Metric.key)
    return list(session.execute(stmt).scalars())

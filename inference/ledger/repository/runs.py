"""Runs: one per state-machine execution, with its counts, deadline and outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import Prediction, Run, RunStatus, utcnow
from inference.ledger.repository.common import dialect_insert
from inference.ledger.repository.errors import RunNotFound


def start_run(
    session: Session,
    execution_id: str,
    *,
    model_version: str | None = None,
    started_at: datetime | None = None,
    deadline_at: datetime | None = None,
) -> tuple[Run, bool]:
    """Open the run of a state-machine execution. Returns ``(run, created)``.

    Idempotent on ``execution_id``: a retried process step returns the existing run. A run that
    had failed or was abandoned is reopened (a Step Functions redrive keeps the execution id).
    ``deadline_at``: when the run counts as abandoned unless :func:`touch_run` moves it on.
    """
    now = started_at or utcnow()
    stmt = dialect_insert(session)(Run).values(
        execution_id=execution_id,
        status=RunStatus.running,
        model_version=model_version,
        started_at=now,
        deadline_at=deadline_at,
        scenes_discovered=0,
        scenes_quarantined=0,
        scenes_predicted=0,
        scenes_failed=0,
    )
    stmt = stmt.on_conflict_do_nothing(index_elements=["execution_id"]).returning(Run.id)
    created = session.execute(stmt).first() is not None
    if not created:
        reopen: dict[str, Any] = {"status": RunStatus.running, "error": None, "finished_at": None}
        if model_version is not None:
            reopen["model_version"] = model_version
        session.execute(
            sa.update(Run)
            .where(Run.execution_id == execution_id, Run.status.in_([RunStatus.failed, RunStatus.abandoned]))
            .values(**reopen)
            .execution_options(synchronize_session=False)
        )
        if deadline_at is not None:
            touch_run(session, execution_id, deadline_at)
    return get_run(session, execution_id), created


def get_run(session: Session, execution_id: str) -> Run:
    """The run of ``execution_id`` (fresh from the database).

    Raises:
        RunNotFound: no run was started for it.
    """
    run = session.execute(
        sa.select(Run).where(Run.execution_id == execution_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if run is None:
        raise RunNotFound(f"no run with execution_id {execution_id!r}; was start_run called?")
    return run


_COUNT_FIELDS = ("scenes_discovered", "scenes_quarantined", "scenes_predicted", "scenes_failed")


def touch_run(session: Session, execution_id: str, deadline_at: datetime) -> None:
    """The run made progress: move its deadline to ``deadline_at`` (never backwards)."""
    session.execute(
        sa.update(Run)
        .where(
            Run.execution_id == execution_id,
            sa.or_(Run.deadline_at.is_(None), Run.deadline_at < deadline_at),
        )
        .values(deadline_at=deadline_at)
        .execution_options(synchronize_session=False)
    )


def predicted_by_run(session: Session, run_id: int) -> int:
    """How many predictions belong to run ``run_id`` (each prediction belongs to one run)."""
    stmt = sa.select(sa.func.count(Prediction.id)).where(Prediction.run_id == run_id)
    return int(session.execute(stmt).scalar_one())


def predictions_of_run(session: Session, run_id: int, model_version: str) -> list[Prediction]:
    """The predictions by ``model_version`` that run ``run_id`` recorded, with their scenes."""
    from sqlalchemy.orm import selectinload

    stmt = (
        sa.select(Prediction)
        .where(Prediction.run_id == run_id, Prediction.model_version == model_version)
        .options(selectinload(Prediction.scene))
        .order_by(Prediction.id)
    )
    return list(session.execute(stmt).scalars())


def abandon_stale_runs(session: Session, now: datetime | None = None) -> list[Run]:
    """Close every ``running`` run whose deadline has passed as ``abandoned``, with what it did.

    Its ``scenes_predicted`` becomes the predictions it recorded; scenes it left ``predicting``
    are offered again once their leases expire (:func:`scenes_to_predict`).
    """
    now = now or utcnow()
    stale = list(
        session.execute(
            sa.select(Run).where(Run.status == RunStatus.running, Run.deadline_at < now).with_for_update()
        ).scalars()
    )
    for run in stale:
        run.scenes_predicted = predicted_by_run(session, run.id)
        run.status = RunStatus.abandoned
        run.finished_at = now
        run.error = (
            f"abandoned: no progress since its deadline {run.deadline_at.isoformat()}; "
            f"{run.scenes_predicted} scene(s) predicted before it stopped"
        )
    session.flush()
    return stale


def update_run(
    session: Session, execution_id: str, *, model_version: str | None = None, **counts: int
) -> Run:
    """Set some of a run's counts (``scenes_discovered=...`` etc.) and/or its model version."""
    unknown = set(counts) - set(_COUNT_FIELDS)
    if unknown:
        raise TypeError(f"unknown run counts {sorted(unknown)}; expected some of {_COUNT_FIELDS}")
    run = get_run(session, execution_id)
    for field, value in counts.items():
        if value < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
        setattr(run, field, value)
    if model_version is not None:
        run.model_version = model_version
    session.flush()
    return run


def finish_run(
    session: Session,
    execution_id: str,
    *,
    status: RunStatus = RunStatus.succeeded,
    error: str | None = None,
    finished_at: datetime | None = None,
    **counts: int,
) -> Run:
    """Close a run, optionally setting its final counts. Calling it again just updates it."""
    status = RunStatus(status)
    if status == RunStatus.running:
        raise ValueError("finish_run needs a final status (succeeded or failed), not 'running'")
    run = update_run(session, execution_id, **counts)
    run.status = status
    run.error = error
    run.finished_at = finished_at or utcnow()
    session.flush()
    return run


def fail_run(session: Session, execution_id: str, error: str) -> Run:
    """Mark an execution failed — the state machine's Catch path.

    Works even if the failure came before :func:`start_run` (the run is then created failed),
    so no failed execution goes unrecorded. Scenes left in ``predicting`` are picked up by the
    next run through :func:`scenes_to_predict`.
    """
    now = utcnow()
    stmt = dialect_insert(session)(Run).values(
        execution_id=execution_id,
        status=RunStatus.failed,
        started_at=now,
        finished_at=now,
        error=error,
        scenes_discovered=0,
        scenes_quarantined=0,
        scenes_predicted=0,
        scenes_failed=0,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["execution_id"],
        set_={"status": RunStatus.failed, "finished_at": now, "error": error},
    )
    session.execute(stmt)
    return get_run(session, execution_id)


def model_changes(session: Session) -> list[dict[str, Any]]:
    """Runs where the model version differs from the previous run's (the ``model_changes`` view).

    Each row: ``run_id``, ``execution_id``, ``started_at``, ``model_version``,
    ``previous_model_version`` (None for the first run). Grafana annotates these.
    """
    rows = session.execute(
        sa.text(
            "SELECT run_id, execution_id, started_at, model_version, previous_model_version "
            "FROM model_changes ORDER BY started_at, run_id"
        )
    ).mappings()
    return [dict(row) for row in rows]

"""Shadow comparisons: a challenger's prediction beside the champion's, under a lease."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import (
    Metric,
    Prediction,
    Scene,
    SceneStatus,
    ShadowComparison,
    ShadowStatus,
    utcnow,
)
from inference.ledger.repository.common import DEFAULT_MAX_ATTEMPTS, dialect_insert
from inference.ledger.repository.errors import ShadowLeaseHeld

#: Scene metrics of a shadow comparison (under the challenger's version), per class name.
SHADOW_IOU = "shadow_iou"
SHADOW_AREA_DELTA = "shadow_area_delta"
#: Run-level metrics of a run's shadow comparisons (inference.shadow.run_rows writes them).
SHADOW_SCENES, SHADOW_AGREEMENT, SHADOW_SECONDS, SHADOW_COST_USD = SHADOW_RUN_METRICS = (
    "shadow_scenes",
    "shadow_agreement",
    "shadow_seconds",
    "shadow_cost_usd",
)


def get_shadow(
    session: Session, scene_id: int, champion_version: str, challenger_version: str
) -> ShadowComparison | None:
    """The shadow comparison of ``scene_id`` by ``challenger_version`` beside ``champion_version``."""
    stmt = sa.select(ShadowComparison).where(
        ShadowComparison.scene_id == scene_id,
        ShadowComparison.champion_version == champion_version,
        ShadowComparison.challenger_version == challenger_version,
    )
    return session.execute(stmt).scalar_one_or_none()


def claim_shadow(
    session: Session,
    scene_id: int,
    champion_version: str,
    challenger_version: str,
    owner: str,
    lease_s: float,
) -> ShadowComparison:
    """Hold the shadow comparison of a scene for ``owner`` (the execution) for ``lease_s`` seconds.

    The row is created on first claim. As for a scene's prediction, one conditional UPDATE
    decides: the same owner renews (its next shadow block, its assembly), an expired or failed
    attempt is taken over with one more attempt counted, a live lease of another owner is never
    taken. A compared row is returned as it is (the caller skips it).

    Raises:
        ShadowLeaseHeld: another owner's lease is still live.
    """
    key = {
        "scene_id": scene_id,
        "champion_version": champion_version,
        "challenger_version": challenger_version,
    }
    now = utcnow()
    session.execute(
        dialect_insert(session)(ShadowComparison)
        .values(**key, status=ShadowStatus.failed, attempts=0, created_at=now)
        .on_conflict_do_nothing(index_elements=list(key))
    )
    row = get_shadow(session, scene_id, champion_version, challenger_version)
    assert row is not None  # inserted or already there
    renewal = sa.and_(
        ShadowComparison.status == ShadowStatus.predicting, ShadowComparison.lease_owner == owner
    )
    free = sa.or_(
        ShadowComparison.status == ShadowStatus.failed,
        ShadowComparison.lease_owner.is_(None),
        ShadowComparison.lease_owner == owner,
        ShadowComparison.lease_expires_at < now,
    )
    changed = session.execute(
        sa.update(ShadowComparison)
        .where(ShadowComparison.id == row.id, ShadowComparison.status != ShadowStatus.compared, free)
        .values(
            status=ShadowStatus.predicting,
            attempts=sa.case((renewal, ShadowComparison.attempts), else_=ShadowComparison.attempts + 1),
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            error=None,
            error_message=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(row)
    if changed != 1 and row.status != ShadowStatus.compared:
        raise ShadowLeaseHeld(row)
    return row


def record_shadow(
    session: Session,
    row: ShadowComparison,
    *,
    pixels: int,
    agreement: float,
    seconds: float,
    class_uri: str,
    run_id: int | None,
    compared_at: datetime | None = None,
) -> bool:
    """Mark the comparison done with its figures (at ``compared_at``, default now); False (a
    no-op) if it already was."""
    changed = session.execute(
        sa.update(ShadowComparison)
        .where(ShadowComparison.id == row.id, ShadowComparison.status != ShadowStatus.compared)
        .values(
            status=ShadowStatus.compared,
            pixels=int(pixels),
            agreement=float(agreement),
            seconds=float(seconds),
            class_uri=class_uri,
            compared_at=compared_at or utcnow(),
            run_id=run_id,
            lease_owner=None,
            lease_expires_at=None,
            error=None,
            error_message=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(row)
    return changed == 1


def fail_shadow(session: Session, row: ShadowComparison, reason: str, message: str | None = None) -> None:
    """Record a failed shadow attempt and release its lease (a later run may retry it)."""
    session.execute(
        sa.update(ShadowComparison)
        .where(ShadowComparison.id == row.id, ShadowComparison.status != ShadowStatus.compared)
        .values(
            status=ShadowStatus.failed,
            error=reason[:64],
            error_message=message,
            lease_owner=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)


def unfinished_shadows(
    session: Session,
    champion_version: str,
    challenger_version: str,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: datetime | None = None,
) -> list[Scene]:
    """Scenes the champion has predicted whose shadow comparison by ``challenger_version`` was
    started but not finished (failed, or its lease expired) and has attempts left."""
    now = now or utcnow()
    stmt = (
        sa.select(Scene)
        .join(ShadowComparison, ShadowComparison.scene_id == Scene.id)
        .join(
            Prediction,
            sa.and_(Prediction.scene_id == Scene.id, Prediction.model_version == champion_version),
        )
        .where(
            ShadowComparison.champion_version == champion_version,
            ShadowComparison.challenger_version == challenger_version,
            ShadowComparison.status != ShadowStatus.compared,
            ShadowComparison.attempts < max_attempts,
            sa.or_(
                ShadowComparison.status == ShadowStatus.failed,
                ShadowComparison.lease_owner.is_(None),
                ShadowComparison.lease_expires_at < now,
            ),
            Scene.status != SceneStatus.quarantined,
        )
        .order_by(Scene.id)
    )
    return list(session.execute(stmt).scalars())


def shadows_of_run(session: Session, run_id: int) -> list[ShadowComparison]:
    """The shadow comparisons run ``run_id`` recorded."""
    stmt = sa.select(ShadowComparison).where(ShadowComparison.run_id == run_id).order_by(ShadowComparison.id)
    return list(session.execute(stmt).scalars())


def shadow_evidence(session: Session, champion_version: str, challenger_version: str) -> dict[str, Any]:
    """What the ledger holds on ``challenger_version`` beside ``champion_version``, for the gate.

    ``scenes`` compared, ``pixels``, the pixel-weighted ``agreement``, and ``area_shift``: per
    class the pixel-weighted mean of the scenes' class-area deltas (challenger share minus
    champion share).
    """
    compared = sa.and_(
        ShadowComparison.champion_version == champion_version,
        ShadowComparison.challenger_version == challenger_version,
        ShadowComparison.status == ShadowStatus.compared,
    )
    scenes, pixels, agreeing = session.execute(
        sa.select(
            sa.func.count(ShadowComparison.id),
            sa.func.coalesce(sa.func.sum(ShadowComparison.pixels), 0),
            sa.func.coalesce(sa.func.sum(ShadowComparison.agreement * ShadowComparison.pixels), 0.0),
        ).where(compared)
    ).one()
    deltas = session.execute(
        sa.select(Metric.key, sa.func.sum(Metric.value * ShadowComparison.pixels))
        .join(
            ShadowComparison,
            sa.and_(
                Metric.scene_id == ShadowComparison.scene_id,
                Metric.run_id == ShadowComparison.run_id,
                Metric.model_version == ShadowComparison.challenger_version,
            ),
        )
        .where(compared, Metric.name == SHADOW_AREA_DELTA)
        .group_by(Metric.key)
    ).all()
    pixels = int(pixels)
    return {
        "champion_version": champion_version,
        "challenger_version": challenger_version,
        "scenes": int(scenes),
        "pixels": pixels,
        "agreement": float(agreeing) / pixels if pixels else None,
        "area_shift": {key: float(total) / pixels for key, total in deltas} if pixels else {},
    }

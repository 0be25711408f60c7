"""Scenes: inputs registered by content hash, their sources, status transitions and leases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import (
    ALLOWED_TRANSITIONS,
    Prediction,
    Scene,
    SceneSource,
    SceneStatus,
    utcnow,
)
from inference.ledger.repository.common import DEFAULT_MAX_ATTEMPTS, check_sha256, dialect_insert
from inference.ledger.repository.errors import IllegalTransition, LeaseHeld


def register_scene(
    session: Session,
    sha256: str,
    source_uri: str,
    size_bytes: int,
    *,
    etag: str | None = None,
    width: int | None = None,
    height: int | None = None,
    crs: str | None = None,
    bounds: Sequence[float] | None = None,
    bbox_wgs84: Sequence[float] | None = None,
    area_km2: float | None = None,
) -> tuple[Scene, bool]:
    """Record an input by content hash. Returns ``(scene, created)``.

    The same bytes seen again (a retry, or a duplicate upload under another key) return the
    existing row with ``created=False``; the new URI is recorded as an alias in ``scene_sources``.
    ``bounds`` is ``(minx, miny, maxx, maxy)`` in ``crs``.
    """
    sha256 = check_sha256(sha256)
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    minx, miny, maxx, maxy = _bounds(bounds)
    now = utcnow()
    values = {
        "sha256": sha256,
        "source_uri": source_uri,
        "size_bytes": size_bytes,
        "width": width,
        "height": height,
        "crs": crs,
        "minx": minx,
        "miny": miny,
        "maxx": maxx,
        "maxy": maxy,
        "bbox_wgs84": list(bbox_wgs84) if bbox_wgs84 is not None else None,
        "area_km2": area_km2,
        "status": SceneStatus.discovered,
        "attempts": 0,
        "discovered_at": now,
        "updated_at": now,
    }
    stmt = (
        dialect_insert(session)(Scene)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["sha256"])
        .returning(Scene.id)  # a row back means inserted; rowcount is not reliable across drivers
    )
    created = session.execute(stmt).first() is not None
    scene = session.execute(sa.select(Scene).where(Scene.sha256 == sha256)).scalar_one()
    record_source(session, scene, source_uri, etag=etag)
    return scene, created


def record_source(session: Session, scene: Scene, uri: str, *, etag: str | None = None) -> None:
    """Remember that ``scene``'s bytes are at ``uri`` (upsert: an overwritten key re-points)."""
    stmt = dialect_insert(session)(SceneSource).values(
        scene_id=scene.id, uri=uri, etag=etag, seen_at=utcnow()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["uri"],
        set_={
            "scene_id": stmt.excluded.scene_id,
            "etag": stmt.excluded.etag,
            "seen_at": stmt.excluded.seen_at,
        },
    )
    session.execute(stmt)


def known_source(session: Session, uri: str, etag: str | None = None) -> Scene | None:
    """The scene last seen at ``uri`` — if its ETag still matches (when one is given) — else None.

    Lets process skip re-downloading and re-hashing keys it has already registered.
    """
    stmt = sa.select(Scene).join(SceneSource, SceneSource.scene_id == Scene.id).where(SceneSource.uri == uri)
    if etag is not None:
        stmt = stmt.where(SceneSource.etag == etag)
    return session.execute(stmt).scalar_one_or_none()


def describe_scene(
    session: Session,
    scene: Scene,
    *,
    width: int | None = None,
    height: int | None = None,
    crs: str | None = None,
    bounds: Sequence[float] | None = None,
    bbox_wgs84: Sequence[float] | None = None,
    area_km2: float | None = None,
) -> Scene:
    """Fill in raster metadata learned while validating; arguments left as None are unchanged."""
    minx, miny, maxx, maxy = _bounds(bounds)
    updates: dict[str, Any] = {
        "width": width,
        "height": height,
        "crs": crs,
        "minx": minx,
        "miny": miny,
        "maxx": maxx,
        "maxy": maxy,
        "bbox_wgs84": list(bbox_wgs84) if bbox_wgs84 is not None else None,
        "area_km2": area_km2,
    }
    for field, value in updates.items():
        if value is not None:
            setattr(scene, field, value)
    session.flush()
    return scene


def _bounds(bounds: Sequence[float] | None) -> tuple[float | None, ...]:
    if bounds is None:
        return (None, None, None, None)
    if len(bounds) != 4:
        raise ValueError(f"bounds must be (minx, miny, maxx, maxy), got {bounds!r}")
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    if not (minx <= maxx and miny <= maxy):
        raise ValueError(f"bounds must be (minx, miny, maxx, maxy) with min <= max, got {bounds!r}")
    return (minx, miny, maxx, maxy)


def transition(
    session: Session,
    scene: Scene,
    new_status: SceneStatus,
    error: str | None = None,
    message: str | None = None,
) -> Scene:
    """Move ``scene`` to ``new_status``, enforcing the allowed-transitions table.

    Re-applying the current status is a no-op. ``failed`` and ``quarantined`` need an ``error``
    reason code; any other status clears the error fields. The update is a compare-and-set on
    the current status, so two workers racing on one scene cannot both win.

    Raises:
        IllegalTransition: the change is not in ``ALLOWED_TRANSITIONS``.
    """
    new_status = SceneStatus(new_status)
    session.flush()
    session.refresh(scene)  # decide on the committed status, not a stale in-memory copy
    current = scene.status
    if current == new_status:
        return scene
    if new_status not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(scene, current, new_status)
    if new_status in (SceneStatus.failed, SceneStatus.quarantined):
        if not error:
            raise ValueError(f"moving scene {scene.id} to {new_status.value!r} needs an error reason code")
    else:
        error, message = None, None
    values: dict[str, Any] = {
        "status": new_status,
        "error": error,
        "error_message": message,
        "updated_at": utcnow(),
    }
    if new_status != SceneStatus.predicting:  # an attempt ended: its lease with it
        values.update(lease_owner=None, lease_expires_at=None)
    if new_status == SceneStatus.predicting:
        values["attempts"] = Scene.attempts + 1
    return _compare_and_set(session, scene, current, new_status, values)


def _compare_and_set(
    session: Session, scene: Scene, current: SceneStatus, new_status: SceneStatus, values: dict[str, Any]
) -> Scene:
    stmt = (
        sa.update(Scene)
        .where(Scene.id == scene.id, Scene.status == current)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    changed = session.execute(stmt).rowcount
    session.refresh(scene)
    if changed != 1 and scene.status != new_status:
        # Someone else moved it meanwhile, to a status other than the one we wanted.
        raise IllegalTransition(scene, scene.status, new_status)
    return scene


def claim_for_prediction(session: Session, scene: Scene, owner: str, lease_s: float) -> Scene:
    """Start one prediction attempt under a lease: ``predicting``, ``attempts + 1``, held by
    ``owner`` (the execution) for ``lease_s`` seconds. The owner's blocks share the lease: each
    claim of a block renews it.

    One conditional UPDATE decides, so two executions racing for a scene cannot both win. A live
    lease of another owner is never taken (:class:`LeaseHeld`); an expired one is taken over, and
    the takeover counts one more attempt, so a scene that kills the Lambda every time runs out of
    attempts instead of being retried forever. The same owner may re-claim (its next block, a
    retried Lambda, its assembly): that renews the lease without counting an attempt (a block
    that keeps failing runs out of its own attempts, see :func:`blocks_to_predict`).

    Raises:
        LeaseHeld: another owner's lease on the scene is still live.
        IllegalTransition: the scene cannot be predicted from its status.
    """
    session.flush()
    session.refresh(scene)
    now = utcnow()
    if (
        scene.status != SceneStatus.predicting
        and SceneStatus.predicting not in ALLOWED_TRANSITIONS[scene.status]
    ):
        raise IllegalTransition(scene, scene.status, SceneStatus.predicting)
    free = sa.or_(
        Scene.status != SceneStatus.predicting,
        Scene.lease_owner.is_(None),
        Scene.lease_owner == owner,
        Scene.lease_expires_at < now,
    )
    # The live owner re-claiming (its next block, a retried Lambda) renews the lease without
    # counting an attempt: a scene's attempts count the executions that took it.
    renewal = sa.and_(Scene.status == SceneStatus.predicting, Scene.lease_owner == owner)
    # Any status a prediction may start from, not just the one read above: the execution's
    # other blocks claim the same scene concurrently, and the loser must renew, not fail.
    claimable = [
        st
        for st in SceneStatus
        if st == SceneStatus.predicting or SceneStatus.predicting in ALLOWED_TRANSITIONS[st]
    ]
    stmt = (
        sa.update(Scene)
        .where(Scene.id == scene.id, Scene.status.in_(claimable), free)
        .values(
            status=SceneStatus.predicting,
            attempts=sa.case((renewal, Scene.attempts), else_=Scene.attempts + 1),
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            error=None,
            error_message=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    changed = session.execute(stmt).rowcount
    session.refresh(scene)
    if changed != 1:
        if scene.status == SceneStatus.predicting and scene.lease_owner not in (None, owner):
            raise LeaseHeld(scene)
        raise IllegalTransition(scene, scene.status, SceneStatus.predicting)
    return scene


def fail_attempt(
    session: Session, scene: Scene, owner: str, reason: str, message: str | None = None
) -> Scene:
    """Record that ``owner``'s attempt failed, unless another owner has taken the scene over
    since (its lease expired): a late failure must not end someone else's live attempt."""
    session.flush()
    session.refresh(scene)
    if scene.status == SceneStatus.predicting and scene.lease_owner not in (None, owner):
        return scene
    if scene.status != SceneStatus.predicting:
        return scene  # already predicted or failed by another attempt
    return fail(session, scene, reason, message)


def quarantine(session: Session, scene: Scene, reason: str, message: str | None = None) -> Scene:
    """Reject an input for good: status ``quarantined`` with a reason code and a message."""
    return transition(session, scene, SceneStatus.quarantined, error=reason, message=message)


def fail(session: Session, scene: Scene, reason: str, message: str | None = None) -> Scene:
    """Record a failed attempt (retried by :func:`scenes_to_predict` while attempts remain)."""
    return transition(session, scene, SceneStatus.failed, error=reason, message=message)


def scenes_to_predict(
    session: Session,
    model_version: str,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    stuck_before: datetime | None = None,
    limit: int | None = None,
) -> list[Scene]:
    """Scenes that still need a prediction by ``model_version``, oldest first.

    That is: ``validated`` scenes; ``failed`` scenes with attempts left; and ``predicting``
    scenes with attempts left — an attempt that crashed (Lambda timeout, OOM) leaves its scene
    there, and a re-run must finish it. Pass ``stuck_before`` to leave alone ``predicting``
    scenes updated after that time (an attempt possibly still running in a concurrent
    execution). Scenes that already have a prediction for ``model_version`` are never returned.
    """
    has_prediction = (
        sa.select(Prediction.id)
        .where(Prediction.scene_id == Scene.id, Prediction.model_version == model_version)
        .exists()
    )
    retryable = Scene.attempts < max_attempts
    # An attempt that crashed leaves its scene predicting: offered again once its lease expired
    # (a live lease belongs to an attempt that may still be running in another execution).
    now = utcnow()
    stuck = sa.and_(
        Scene.status == SceneStatus.predicting,
        retryable,
        sa.or_(Scene.lease_expires_at < now, Scene.lease_expires_at.is_(None)),
    )
    if stuck_before is not None:
        stuck = sa.and_(stuck, Scene.updated_at < stuck_before)
    stmt = (
        sa.select(Scene)
        .where(
            sa.or_(
                Scene.status == SceneStatus.validated,
                sa.and_(Scene.status == SceneStatus.failed, retryable),
                stuck,
            ),
            ~has_prediction,
        )
        .order_by(Scene.discovered_at, Scene.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.execute(stmt).scalars())


def quarantined(session: Session) -> list[Scene]:
    """Quarantined scenes with their reason (``error``) and detail (``error_message``)."""
    stmt = (
        sa.select(Scene).where(Scene.status == SceneStatus.quarantined).order_by(Scene.updated_at, Scene.id)
    )
    return list(session.execute(stmt).scalars())

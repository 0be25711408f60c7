"""Ledger operations used by the process / infer / observe steps.

Every write is idempotent, because Step Functions retries, redrives and re-runs: registering
the same bytes twice, recording the same prediction twice, re-running observe or starting the
same execution twice leaves one row each. Upserts use ``INSERT ... ON CONFLICT`` through the
dialect's own ``insert`` (Postgres and SQLite share the syntax). All SQL is built by the ORM or
Core with bound parameters; no value is ever formatted into a SQL string.

Functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller owns the
transaction (see :func:`inference.ledger.db.session_scope`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from inference.ledger.models import (
    ALLOWED_TRANSITIONS,
    SHA256_LENGTH,
    Block,
    BlockStatus,
    Metric,
    Prediction,
    Run,
    RunStatus,
    Scene,
    SceneSource,
    SceneStatus,
    ShadowComparison,
    ShadowStatus,
    utcnow,
)

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
#: A scene gets this many prediction attempts before scenes_to_predict stops offering it.
DEFAULT_MAX_ATTEMPTS = 3


class LedgerError(RuntimeError):
    """Base class of the ledger's domain errors."""


class IllegalTransition(LedgerError):
    """A scene status change that :data:`~inference.ledger.models.ALLOWED_TRANSITIONS` forbids."""

    def __init__(self, scene: Scene, current: SceneStatus, requested: SceneStatus) -> None:
        allowed = sorted(s.value for s in ALLOWED_TRANSITIONS[current]) or ["(none)"]
        super().__init__(
            f"scene {scene.id} (sha256 {scene.sha256[:12]}…) cannot go from {current.value!r} to "
            f"{requested.value!r}; allowed from {current.value!r}: {', '.join(allowed)}"
        )
        self.scene_id = scene.id
        self.current = current
        self.requested = requested


class RunNotFound(LedgerError):
    """No run with the given execution id."""


class LeaseHeld(LedgerError):
    """Another live execution holds the scene's prediction lease."""

    def __init__(self, scene: Scene) -> None:
        super().__init__(
            f"scene {scene.id} is being predicted by {scene.lease_owner!r} until {scene.lease_expires_at}"
        )
        self.scene_id = scene.id
        self.owner = scene.lease_owner
        self.expires_at = scene.lease_expires_at


class ShadowLeaseHeld(LeaseHeld):
    """Another live execution holds the lease of a scene's shadow comparison."""

    def __init__(self, row: ShadowComparison) -> None:
        LedgerError.__init__(
            self,
            f"the shadow comparison of scene {row.scene_id} by {row.challenger_version} is held by "
            f"{row.lease_owner!r} until {row.lease_expires_at}",
        )
        self.scene_id = row.scene_id
        self.owner = row.lease_owner
        self.expires_at = row.lease_expires_at


def _insert(session: Session) -> Any:
    """The dialect's own ``insert`` construct, which supports ``ON CONFLICT``."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise LedgerError(f"the ledger supports postgresql and sqlite, not {name!r}")


def _check_sha256(sha256: str) -> str:
    value = sha256.lower()
    if len(value) != SHA256_LENGTH or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be {SHA256_LENGTH} hex characters, got {sha256!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


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
    sha256 = _check_sha256(sha256)
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
        _insert(session)(Scene)
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
    stmt = _insert(session)(SceneSource).values(scene_id=scene.id, uri=uri, etag=etag, seen_at=utcnow())
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


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def record_prediction(
    session: Session,
    scene: Scene,
    model_version: str,
    *,
    input_sha256: str,
    class_uri: str,
    confidence_uri: str | None = None,
    stac_uri: str | None = None,
    started_at: datetime,
    finished_at: datetime,
    run_id: int | None = None,
    seconds: float | None = None,
) -> Prediction:
    """Record the prediction of ``model_version`` on ``scene``; scene → predicted.

    The first writer wins on (scene_id, model_version): recording the same prediction twice — a
    retried Lambda, a redriven execution, an attempt whose lease expired while another took the
    scene over — leaves the first row, and with it the run that gets the prediction in its
    totals. Check :attr:`Prediction.run_id` to see whether this call's run won. The scene must
    have been claimed (:func:`claim_for_prediction`) or already be ``predicted``.
    """
    if finished_at < started_at:
        raise ValueError(f"finished_at {finished_at} is before started_at {started_at}")
    values = {
        "scene_id": scene.id,
        "model_version": model_version,
        "input_sha256": _check_sha256(input_sha256),
        "class_uri": class_uri,
        "confidence_uri": confidence_uri,
        "stac_uri": stac_uri,
        "started_at": started_at,
        "finished_at": finished_at,
        # Compute time: the sum over a scene's blocks, which may have run side by side.
        "seconds": (finished_at - started_at).total_seconds() if seconds is None else seconds,
        "run_id": run_id,
    }
    stmt = _insert(session)(Prediction).values(**values)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["scene_id", "model_version"]))
    transition(session, scene, SceneStatus.predicted)
    return session.execute(
        sa.select(Prediction).where(
            Prediction.scene_id == scene.id, Prediction.model_version == model_version
        )
    ).scalar_one()


def predictions_for(session: Session, scene: Scene) -> list[Prediction]:
    """All predictions of a scene, one per model version."""
    stmt = sa.select(Prediction).where(Prediction.scene_id == scene.id).order_by(Prediction.finished_at)
    return list(session.execute(stmt).scalars())


def prediction_by(session: Session, scene: Scene, model_version: str) -> Prediction | None:
    """The prediction of ``scene`` by ``model_version``, or None when it has none yet."""
    stmt = sa.select(Prediction).where(
        Prediction.scene_id == scene.id, Prediction.model_version == model_version
    )
    return session.execute(stmt).scalar_one_or_none()


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def plan_blocks(
    session: Session, scene: Scene, model_version: str, block_chips: int, blocks: Iterable[dict[str, Any]]
) -> list[Block]:
    """The blocks of ``scene``'s prediction by ``model_version``, inserting the planned ones once.

    ``blocks``: ``{"block_index", "row_off", "col_off", "height", "width"}`` per block
    (from :func:`inference.predict.plan_blocks`). A scene planned before keeps its blocks (and
    with them what is done) even if the block size has changed since: ``block_chips`` of the
    returned rows says which plan they follow.
    """
    existing = blocks_of(session, scene.id, model_version)
    if existing:
        return existing
    rows = [
        {**b, "scene_id": scene.id, "model_version": model_version, "block_chips": block_chips}
        for b in blocks
    ]
    if not rows:
        raise ValueError(f"scene {scene.id}: a plan needs at least one block")
    stmt = _insert(session)(Block).values([{**r, "status": BlockStatus.pending, "attempts": 0} for r in rows])
    session.execute(stmt.on_conflict_do_nothing(index_elements=["scene_id", "model_version", "block_index"]))
    return blocks_of(session, scene.id, model_version)


def blocks_of(session: Session, scene_id: int, model_version: str) -> list[Block]:
    """Every block of a scene's prediction by ``model_version``, in index order."""
    stmt = (
        sa.select(Block)
        .where(Block.scene_id == scene_id, Block.model_version == model_version)
        .order_by(Block.block_index)
    )
    return list(session.execute(stmt).scalars())


def get_block(session: Session, scene_id: int, model_version: str, block_index: int) -> Block | None:
    stmt = sa.select(Block).where(
        Block.scene_id == scene_id, Block.model_version == model_version, Block.block_index == block_index
    )
    return session.execute(stmt).scalar_one_or_none()


def blocks_to_predict(blocks: Iterable[Block], max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Block]:
    """The blocks a run still has to predict: not ``predicted``, with attempts left.

    A ``predicting`` block is one whose attempt died (its scene's lease has run out, or the
    scene would not be offered); it is redone.
    """
    return [b for b in blocks if b.status != BlockStatus.predicted and b.attempts < max_attempts]


def _update_unless_predicted(session: Session, block: Block, **values: Any) -> bool:
    """Set ``values`` on ``block`` unless it is predicted (one conditional UPDATE); True if it changed."""
    changed = session.execute(
        sa.update(Block)
        .where(Block.id == block.id, Block.status != BlockStatus.predicted)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(block)
    return changed == 1


def claim_block(session: Session, block: Block) -> Block:
    """Start an attempt on ``block`` (its scene claimed first): ``predicting``, ``attempts + 1``."""
    _update_unless_predicted(
        session,
        block,
        status=BlockStatus.predicting,
        attempts=Block.attempts + 1,
        started_at=utcnow(),
        error=None,
    )
    return block


def record_block(
    session: Session,
    block: Block,
    *,
    output_uri: str,
    started_at: datetime,
    finished_at: datetime,
    seconds: float,
    run_id: int | None,
) -> bool:
    """Mark ``block`` predicted with its outputs; False (a no-op) if it already was."""
    return _update_unless_predicted(
        session,
        block,
        status=BlockStatus.predicted,
        output_uri=output_uri,
        started_at=started_at,
        finished_at=finished_at,
        seconds=seconds,
        run_id=run_id,
        error=None,
        error_message=None,
    )


def blocks_of_run(session: Session, run_id: int) -> int:
    """How many blocks run ``run_id`` recorded."""
    return int(session.execute(sa.select(sa.func.count(Block.id)).where(Block.run_id == run_id)).scalar_one())


def fail_block(session: Session, block: Block, reason: str, message: str | None = None) -> Block:
    """Record a failed attempt on ``block`` (a re-run redoes it while attempts remain)."""
    _update_unless_predicted(
        session, block, status=BlockStatus.failed, error=reason[:64], error_message=message
    )
    return block


# ---------------------------------------------------------------------------------------------
# Shadow comparisons
# ---------------------------------------------------------------------------------------------


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
        _insert(session)(ShadowComparison)
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


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


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
    stmt = _insert(session)(Run).values(
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
    stmt = _insert(session)(Run).values(
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


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


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
    stmt = _insert(session)(Metric).values(values)
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

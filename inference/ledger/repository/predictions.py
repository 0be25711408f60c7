"""Predictions: one per scene and model version, first writer wins."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import Prediction, Scene, SceneStatus
from inference.ledger.repository.common import check_sha256, dialect_insert
from inference.ledger.repository.scenes import transition


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
    encoder_name: str | None = None,
    encoder_version: str | None = None,
) -> Prediction:
    """Record the prediction of ``model_version`` on ``scene``; scene → predicted.

    The first writer wins on (scene_id, model_version): recording the same prediction twice — a
    retried Lambda, a redriven execution, an attempt whose lease expired while another took the
    scene over — leaves the first row, and with it the run that gets the prediction in its
    totals. Check :attr:`Prediction.run_id` to see whether this call's run won. The scene must
    have been claimed (:func:`claim_for_prediction`) or already be ``predicted``.
    ``encoder_name`` / ``encoder_version``: the model version's encoder (lineage), as
    :func:`inference.steps.assemble.encoder_lineage` reads it from the served artifact.
    """
    if finished_at < started_at:
        raise ValueError(f"finished_at {finished_at} is before started_at {started_at}")
    values = {
        "scene_id": scene.id,
        "model_version": model_version,
        "input_sha256": check_sha256(input_sha256),
        "class_uri": class_uri,
        "confidence_uri": confidence_uri,
        "stac_uri": stac_uri,
        "started_at": started_at,
        "finished_at": finished_at,
        # Compute time: the sum over a scene's blocks, which may have run side by side.
        "seconds": (finished_at - started_at).total_seconds() if seconds is None else seconds,
        "run_id": run_id,
        "encoder_name": encoder_name,
        "encoder_version": encoder_version,
    }
    stmt = dialect_insert(session)(Prediction).values(**values)
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

"""Blocks: the planned pieces of a scene's prediction, each with its own attempts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference.ledger.models import Block, BlockStatus, Scene, utcnow
from inference.ledger.repository.common import DEFAULT_MAX_ATTEMPTS, dialect_insert


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
    stmt = dialect_insert(session)(Block).values(
        [{**r, "status": BlockStatus.pending, "attempts": 0} for r in rows]
    )
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

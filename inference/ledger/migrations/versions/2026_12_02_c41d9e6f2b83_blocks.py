"""Blocks: a scene's prediction split into windows that one infer call each predicts.

Why: a real NAIP quarter-quad at the large preset needs one to three hours of Lambda compute,
and a Lambda call stops at 900 s. ``process`` now plans blocks per (scene, model version); the
Map fans out over them; the scene is assembled from its blocks.

- ``blocks``: scene, model version, index (unique together), the plan's block size, the core
  window, status (VARCHAR + CHECK), attempts, error, output URI, timings, run.

Revision ID: c41d9e6f2b83
Revises: 8b5e2d7c4a91
Create Date: 2026-12-02 01:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c41d9e6f2b83"
down_revision: str | Sequence[str] | None = "8b5e2d7c4a91"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy at this revision (migrations must not import the live models).
BLOCK_STATUSES = ("pending", "predicting", "predicted", "failed")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("block_chips", sa.Integer(), nullable=False),
        sa.Column("row_off", sa.Integer(), nullable=False),
        sa.Column("col_off", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                *BLOCK_STATUSES,
                name=op.f("ck_blocks_block_status"),
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("output_uri", sa.Text(), nullable=True),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["scene_id"], ["scenes.id"], name=op.f("fk_blocks_scene_id_scenes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_blocks_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocks")),
        sa.UniqueConstraint(
            "scene_id",
            "model_version",
            "block_index",
            name=op.f("uq_blocks_scene_id_model_version_block_index"),
        ),
    )
    op.create_index(op.f("ix_blocks_scene_id"), "blocks", ["scene_id"])
    op.create_index(op.f("ix_blocks_run_id"), "blocks", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blocks_run_id"), table_name="blocks")
    op.drop_index(op.f("ix_blocks_scene_id"), table_name="blocks")
    op.drop_table("blocks")

"""Shadow comparisons: a challenger predicts the champion's scenes beside it, never served.

Why: a candidate that missed (or has not yet met) the promotion gate should be judged on live
imagery before it serves. The infer and assemble steps predict the same blocks with the
registry's challenger after the champion; one row per (scene, champion, challenger) holds the
lease of that work and, once compared, the pixel agreement, the challenger's time and its class
COG. Per-class IoU and class-area deltas are metrics rows.

- ``shadow_comparisons``: scene, champion and challenger versions (unique together), status
  (VARCHAR + CHECK), attempts, lease owner/expiry, error, pixels, agreement, seconds, class URI,
  timestamps, run.

Revision ID: e7a4c2b9d315
Revises: c41d9e6f2b83
Create Date: 2026-12-02 06:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e7a4c2b9d315"
down_revision: str | Sequence[str] | None = "c41d9e6f2b83"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy at this revision (migrations must not import the live models).
SHADOW_STATUSES = ("predicting", "compared", "failed")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shadow_comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.Integer(), nullable=False),
        sa.Column("champion_version", sa.String(length=128), nullable=False),
        sa.Column("challenger_version", sa.String(length=128), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                *SHADOW_STATUSES,
                name=op.f("ck_shadow_comparisons_shadow_status"),
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=512), nullable=True),
        sa.Column("lease_expires_at", _ts(), nullable=True),
        sa.Column("error", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("pixels", sa.BigInteger(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("class_uri", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("compared_at", _ts(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["scene_id"],
            ["scenes.id"],
            name=op.f("fk_shadow_comparisons_scene_id_scenes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_shadow_comparisons_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_comparisons")),
        sa.UniqueConstraint(
            "scene_id",
            "champion_version",
            "challenger_version",
            name=op.f("uq_shadow_comparisons_scene_id_champion_version_challenger_version"),
        ),
    )
    op.create_index(op.f("ix_shadow_comparisons_scene_id"), "shadow_comparisons", ["scene_id"])
    op.create_index(
        op.f("ix_shadow_comparisons_challenger_version"), "shadow_comparisons", ["challenger_version"]
    )
    op.create_index(op.f("ix_shadow_comparisons_run_id"), "shadow_comparisons", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_shadow_comparisons_run_id"), table_name="shadow_comparisons")
    op.drop_index(op.f("ix_shadow_comparisons_challenger_version"), table_name="shadow_comparisons")
    op.drop_index(op.f("ix_shadow_comparisons_scene_id"), table_name="shadow_comparisons")
    op.drop_table("shadow_comparisons")

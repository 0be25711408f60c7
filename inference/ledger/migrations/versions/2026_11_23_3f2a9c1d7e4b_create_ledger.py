"""Create the inference ledger: scenes, scene_sources, runs, predictions, metrics, two views.

Why: the process → infer → observe chain needs one consistent record of every input (keyed by
the sha256 of its bytes, so a duplicate upload is one scene), every prediction with the model
version that made it, and per-run / per-scene metrics for Grafana. Every table is written by
idempotent upserts, so the constraints here are what makes a re-run safe:

- ``scenes.sha256`` unique: the same bytes are one scene, whatever key they were uploaded at.
- ``scene_sources.uri`` unique: each listed key maps to the scene it held last.
- ``runs.execution_id`` unique: one row per Step Functions execution, even when retried.
- ``predictions (scene_id, model_version)`` unique: a re-run never duplicates a prediction.
- ``metrics``: two *partial* unique indexes, (run_id, scene_id, name, key) where scene_id is
  not null and (run_id, name, key) where it is null, because SQL treats NULLs as distinct and a
  plain unique constraint would let run-level metrics duplicate. Partial indexes and
  ``ON CONFLICT ... WHERE`` behave the same on Postgres and SQLite; ``NULLS NOT DISTINCT``
  would be Postgres ≥ 15 only.

Enums are VARCHAR + named CHECK constraints rather than native Postgres enums, so adding a
status later is a constraint swap (batch mode on SQLite) instead of ``ALTER TYPE``.

Views: ``quarantine`` lists rejected inputs with their reasons; ``model_changes`` lists runs
whose model version differs from the previous run's (Grafana annotations). Both use only
standard SQL (``LAG`` needs SQLite ≥ 3.25).

Revision ID: 3f2a9c1d7e4b
Revises:
Create Date: 2026-11-23 07:25:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "3f2a9c1d7e4b"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types at this revision (migrations must not import the live models).
SCENE_STATUSES = ("discovered", "validated", "quarantined", "predicting", "predicted", "failed")
RUN_STATUSES = ("running", "succeeded", "failed")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


QUARANTINE_VIEW = """
CREATE VIEW quarantine AS
SELECT id AS scene_id, sha256, source_uri, error AS reason, error_message AS message,
       size_bytes, discovered_at, updated_at AS quarantined_at
FROM scenes
WHERE status = 'quarantined'
"""

MODEL_CHANGES_VIEW = """
CREATE VIEW model_changes AS
SELECT run_id, execution_id, started_at, model_version, previous_model_version
FROM (
    SELECT id AS run_id, execution_id, started_at, model_version,
           LAG(model_version) OVER (ORDER BY started_at, id) AS previous_model_version
    FROM runs
    WHERE model_version IS NOT NULL
) AS ordered
WHERE previous_model_version IS NULL OR previous_model_version <> model_version
"""


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("crs", sa.Text(), nullable=True),
        sa.Column("minx", sa.Float(), nullable=True),
        sa.Column("miny", sa.Float(), nullable=True),
        sa.Column("maxx", sa.Float(), nullable=True),
        sa.Column("maxy", sa.Float(), nullable=True),
        sa.Column("bbox_wgs84", JSON, nullable=True),
        sa.Column("area_km2", sa.Float(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                *SCENE_STATUSES,
                name=op.f("ck_scenes_scene_status"),
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("discovered_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenes")),
        sa.UniqueConstraint("sha256", name=op.f("uq_scenes_sha256")),
    )
    op.create_index(op.f("ix_scenes_status"), "scenes", ["status"])

    op.create_table(
        "scene_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("seen_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scene_id"],
            ["scenes.id"],
            name=op.f("fk_scene_sources_scene_id_scenes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scene_sources")),
        sa.UniqueConstraint("uri", name=op.f("uq_scene_sources_uri")),
    )
    op.create_index(op.f("ix_scene_sources_scene_id"), "scene_sources", ["scene_id"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.String(length=512), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                *RUN_STATUSES,
                name=op.f("ck_runs_run_status"),
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("scenes_discovered", sa.Integer(), nullable=False),
        sa.Column("scenes_quarantined", sa.Integer(), nullable=False),
        sa.Column("scenes_predicted", sa.Integer(), nullable=False),
        sa.Column("scenes_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("execution_id", name=op.f("uq_runs_execution_id")),
    )
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"])

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("input_sha256", sa.String(length=64), nullable=False),
        sa.Column("class_uri", sa.Text(), nullable=False),
        sa.Column("confidence_uri", sa.Text(), nullable=True),
        sa.Column("stac_uri", sa.Text(), nullable=True),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_predictions_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["scene_id"], ["scenes.id"], name=op.f("fk_predictions_scene_id_scenes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("scene_id", "model_version", name=op.f("uq_predictions_scene_id_model_version")),
    )
    op.create_index(op.f("ix_predictions_model_version"), "predictions", ["model_version"])
    op.create_index(op.f("ix_predictions_run_id"), "predictions", ["run_id"])

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("recorded_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scene_id"], ["scenes.id"], name=op.f("fk_metrics_scene_id_scenes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
    )
    op.create_index(op.f("ix_metrics_scene_id"), "metrics", ["scene_id"])
    op.create_index(op.f("ix_metrics_name_key_recorded_at"), "metrics", ["name", "key", "recorded_at"])
    op.create_index(
        op.f("uq_metrics_scene_level"),
        "metrics",
        ["run_id", "scene_id", "name", "key"],
        unique=True,
        postgresql_where=sa.text("scene_id IS NOT NULL"),
        sqlite_where=sa.text("scene_id IS NOT NULL"),
    )
    op.create_index(
        op.f("uq_metrics_run_level"),
        "metrics",
        ["run_id", "name", "key"],
        unique=True,
        postgresql_where=sa.text("scene_id IS NULL"),
        sqlite_where=sa.text("scene_id IS NULL"),
    )

    op.execute(QUARANTINE_VIEW)
    op.execute(MODEL_CHANGES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS model_changes")
    op.execute("DROP VIEW IF EXISTS quarantine")
    op.drop_table("metrics")
    op.drop_table("predictions")
    op.drop_table("runs")
    op.drop_table("scene_sources")
    op.drop_table("scenes")

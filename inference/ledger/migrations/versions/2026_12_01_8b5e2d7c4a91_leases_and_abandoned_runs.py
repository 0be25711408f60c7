"""Leases on scene claims, run deadlines, and the ``abandoned`` run status.

Why: a claim used to be a bare status, so a second execution could take over a scene another
live execution was predicting (both predicted it, both counted it), and a run whose execution
died (SIGKILL, a timed-out Lambda, a lost redrive) stayed ``running`` forever.

- ``scenes.lease_owner`` / ``scenes.lease_expires_at``: the execution holding the current
  prediction attempt and until when. A live lease is never taken; an expired one is taken over
  (and counted as one more attempt).
- ``runs.deadline_at``: moved forward whenever the run makes progress; a run still ``running``
  past it is closed as ``abandoned`` by the next ``process`` with what it did.
- ``runs.status`` gains ``abandoned``: a CHECK constraint swap (batch mode on SQLite). The two
  views read ``runs``, so they are dropped and recreated around the table rebuild.

Revision ID: 8b5e2d7c4a91
Revises: 3f2a9c1d7e4b
Create Date: 2026-12-01 21:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8b5e2d7c4a91"
down_revision: str | Sequence[str] | None = "3f2a9c1d7e4b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies at this revision (migrations must not import the live models).
OLD_RUN_STATUSES = ("running", "succeeded", "failed")
NEW_RUN_STATUSES = (*OLD_RUN_STATUSES, "abandoned")
RUN_STATUS_CHECK = "ck_runs_run_status"

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


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _status_check(statuses: Sequence[str]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def _swap_run_status_check(statuses: Sequence[str], add_deadline: bool) -> None:
    op.execute("DROP VIEW IF EXISTS model_changes")
    op.execute("DROP VIEW IF EXISTS quarantine")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f(RUN_STATUS_CHECK), type_="check")
        batch.create_check_constraint(op.f(RUN_STATUS_CHECK), _status_check(statuses))
        if add_deadline:
            batch.add_column(sa.Column("deadline_at", _ts(), nullable=True))
        else:
            batch.drop_column("deadline_at")
    op.execute(QUARANTINE_VIEW)
    op.execute(MODEL_CHANGES_VIEW)


def upgrade() -> None:
    with op.batch_alter_table("scenes") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", _ts(), nullable=True))
    _swap_run_status_check(NEW_RUN_STATUSES, add_deadline=True)


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'abandoned'")
    _swap_run_status_check(OLD_RUN_STATUSES, add_deadline=False)
    op.execute("DROP VIEW IF EXISTS model_changes")
    op.execute("DROP VIEW IF EXISTS quarantine")
    with op.batch_alter_table("scenes") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    op.execute(QUARANTINE_VIEW)
    op.execute(MODEL_CHANGES_VIEW)

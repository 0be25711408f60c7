"""Predictions name the encoder of the model version that made them.

Why: a model version is now trained on an encoder from the encoder registry (continued
pretraining, ``model.encoder_version``), and the same encoder serves in the Lambda inside the
exported artifact. The ledger's lineage of a prediction is the model version *and* that encoder,
read from the served artifact's metadata (``encoder_weights``), so a dashboard or an audit can
ask which predictions a given encoder version made without opening the registry.

- ``predictions.encoder_name``: the encoder registry name, else the artifact's encoder source
  (``random-init``, a catalog name or a file URI); NULL when the artifact records none.
- ``predictions.encoder_version``: the encoder registry version id; NULL for any other source.

Both nullable: rows written before this revision keep NULL (their artifacts did not record it).

Revision ID: 5d3e8a1f6c20
Revises: e7a4c2b9d315
Create Date: 2026-12-07 15:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5d3e8a1f6c20"
down_revision: str | Sequence[str] | None = "e7a4c2b9d315"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("encoder_name", sa.Text(), nullable=True))
        batch.add_column(sa.Column("encoder_version", sa.String(length=128), nullable=True))


def downgrade() -> None:
    """Loses the encoder names and versions recorded since the upgrade."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("encoder_version")
        batch.drop_column("encoder_name")

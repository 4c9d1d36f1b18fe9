"""usage entries record their first charged pot inline (one row per call on the hot path)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_entries") as batch:
        batch.add_column(sa.Column("pot_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pot_amount", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_entries") as batch:
        batch.drop_column("pot_amount")
        batch.drop_column("pot_id")

"""meter owners report their activity: calls in flight and idle-since, for the ledger check

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meter_owners") as batch:
        batch.add_column(sa.Column("inflight", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("idle_since", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meter_owners") as batch:
        batch.drop_column("idle_since")
        batch.drop_column("inflight")

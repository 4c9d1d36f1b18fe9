"""reasoning records: the reasoning behind each tool call, shared by workers and kept across restarts

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reasoning_records",
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_reasoning_records_expires_at", "reasoning_records", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_reasoning_records_expires_at", table_name="reasoning_records")
    op.drop_table("reasoning_records")

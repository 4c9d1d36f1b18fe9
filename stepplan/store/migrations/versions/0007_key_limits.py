"""key_limits: per-key settings on api_keys, and key Credit-limit pots

Revision ID: 0007_key_limits
Revises: 0006_responses
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_key_limits"
down_revision = "0006_responses"
branch_labels = None
depends_on = None

_KEY_COLUMNS = ("expires_at", "models", "rpm", "concurrency", "credit_limit_daily", "credit_limit_monthly",
                "ip_allow", "labels", "last_used_at", "replaced_by")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("models", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("credit_limit_daily", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("credit_limit_monthly", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("ip_allow", sa.Text(), nullable=True))
        batch.add_column(sa.Column("labels", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("replaced_by", sa.Integer(), nullable=True))
    with op.batch_alter_table("credit_pots") as batch:
        batch.add_column(sa.Column("key_id", sa.Integer(), nullable=True))
    op.create_index("uq_credit_pots_key_period", "credit_pots", ["key_id", "kind", "cycle", "starts_at"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("uq_credit_pots_key_period", table_name="credit_pots")
    with op.batch_alter_table("credit_pots") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("api_keys") as batch:
        for name in reversed(_KEY_COLUMNS):
            batch.drop_column(name)

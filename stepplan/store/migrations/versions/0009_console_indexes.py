"""console: web console sessions, and the ledger indexes its pages read by

Revision ID: 0009_console_indexes
Revises: 0008_admin_audit
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_console_indexes"
down_revision = "0008_admin_audit"
branch_labels = None
depends_on = None

USAGE_COLUMNS = ["account_id", "created_at", "requested_model", "served_model", "charged", "uncollected",
                 "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"]


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("admin_fp", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    # Keys page: each key's last use.
    op.create_index("ix_usage_entries_key_time", "usage_entries", ["key_id", "created_at"])
    # Calls page: an account's newest entries, paged by id.
    op.create_index("ix_usage_entries_account_id", "usage_entries", ["account_id", "id"])
    # Usage page: per day and model over a range, read from the index alone (100k entries in ~0.1 s).
    op.create_index("ix_usage_entries_account_usage", "usage_entries", USAGE_COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_usage_entries_account_usage", table_name="usage_entries")
    op.drop_index("ix_usage_entries_account_id", table_name="usage_entries")
    op.drop_index("ix_usage_entries_key_time", table_name="usage_entries")
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")

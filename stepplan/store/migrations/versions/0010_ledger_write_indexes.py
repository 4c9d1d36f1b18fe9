"""ledger write cost: drop two usage_entries indexes that every settled call paid for

``ix_usage_entries_account_time`` (account_id, created_at) is the leading part of
``ix_usage_entries_account_usage`` (account_id, created_at, …), which answers the same range
queries; ``ix_usage_entries_key_time`` served only the console's "last used" column, which
now reads ``api_keys.last_used_at`` and the process's not-yet-written uses. Each index was
one more B-tree insert per ledger entry (docs/performance.md, "Sixth session").

Revision ID: 0010_ledger_write_indexes
Revises: 0009_console_indexes
"""

from alembic import op

revision = "0010_ledger_write_indexes"
down_revision = "0009_console_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_usage_entries_key_time", table_name="usage_entries")
    op.drop_index("ix_usage_entries_account_time", table_name="usage_entries")


def downgrade() -> None:
    op.create_index("ix_usage_entries_account_time", "usage_entries", ["account_id", "created_at"])
    op.create_index("ix_usage_entries_key_time", "usage_entries", ["key_id", "created_at"])

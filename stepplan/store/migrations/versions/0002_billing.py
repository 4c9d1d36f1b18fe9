"""billing: subscriptions, credit pots, leases, the usage ledger and billing events

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "billing_accounts",
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("version", BIG, nullable=False, server_default="0"),
        sa.Column("updated_at", BIG, nullable=False),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("price_fen", BIG, nullable=False),
        sa.Column("term_start", BIG, nullable=False),
        sa.Column("term_end", BIG, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pending_plan", sa.String(64), nullable=True),
        sa.Column("auto_renew", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("ended_at", BIG, nullable=True),
    )
    op.create_index("ix_subscriptions_account_id", "subscriptions", ["account_id"])
    op.create_table(
        "credit_pots",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subscription_id", sa.Integer(), sa.ForeignKey("subscriptions.id"), nullable=True),
        sa.Column("cycle", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("total", BIG, nullable=False),
        sa.Column("used", BIG, nullable=False, server_default="0"),
        sa.Column("leased", BIG, nullable=False, server_default="0"),
        sa.Column("starts_at", BIG, nullable=False),
        sa.Column("expires_at", BIG, nullable=False),
        sa.Column("created_at", BIG, nullable=False),
        sa.UniqueConstraint("subscription_id", "kind", "cycle", name="uq_credit_pots_cycle"),
        sa.CheckConstraint("used >= 0 AND leased >= 0 AND used + leased <= total", name="ck_credit_pots_bounds"),
    )
    op.create_index("ix_credit_pots_account_expiry", "credit_pots", ["account_id", "expires_at"])
    op.create_table(
        "meter_owners",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_start", sa.String(32), nullable=False),
        sa.Column("started_at", BIG, nullable=False),
        sa.Column("heartbeat_at", BIG, nullable=False),
    )
    op.create_table(
        "credit_leases",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("pot_id", sa.Integer(), sa.ForeignKey("credit_pots.id"), primary_key=True),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("updated_at", BIG, nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_credit_leases_amount"),
    )
    op.create_index("ix_credit_leases_pot", "credit_leases", ["pot_id"])
    op.create_table(
        "usage_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(80), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("requested_model", sa.String(128), nullable=False),
        sa.Column("served_model", sa.String(128), nullable=False),
        sa.Column("input_tokens", BIG, nullable=False),
        sa.Column("cache_read_tokens", BIG, nullable=False),
        sa.Column("cache_write_tokens", BIG, nullable=False),
        sa.Column("output_tokens", BIG, nullable=False),
        sa.Column("reasoning_tokens", BIG, nullable=False),
        sa.Column("usage_known", sa.Boolean(), nullable=False),
        sa.Column("rate_input", BIG, nullable=False),
        sa.Column("rate_cache", BIG, nullable=False),
        sa.Column("rate_output", BIG, nullable=False),
        sa.Column("cost", BIG, nullable=False),
        sa.Column("charged", BIG, nullable=False),
        sa.Column("uncollected", BIG, nullable=False),
        sa.Column("reserved", BIG, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("route_score", sa.Float(), nullable=True),
        sa.Column("first_byte_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("started_at", BIG, nullable=False),
        sa.Column("created_at", BIG, nullable=False),
        sa.CheckConstraint("charged >= 0 AND uncollected >= 0 AND charged + uncollected = cost",
                           name="ck_usage_entries_amounts"),
    )
    op.create_index("ix_usage_entries_account_time", "usage_entries", ["account_id", "created_at"])
    op.create_table(
        "usage_charges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(80), nullable=False),
        sa.Column("pot_id", sa.Integer(), sa.ForeignKey("credit_pots.id"), nullable=False),
        sa.Column("amount", BIG, nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_usage_charges_amount"),
    )
    op.create_index("ix_usage_charges_request_id", "usage_charges", ["request_id"])
    op.create_index("ix_usage_charges_pot_id", "usage_charges", ["pot_id"])
    op.create_table(
        "billing_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=True),
        sa.Column("pot_id", sa.Integer(), nullable=True),
        sa.Column("plan", sa.String(64), nullable=True),
        sa.Column("amount_fen", BIG, nullable=False, server_default="0"),
        sa.Column("credits", BIG, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("created_at", BIG, nullable=False),
    )
    op.create_index("ix_billing_events_account_id", "billing_events", ["account_id"])


def downgrade() -> None:
    for table in ("billing_events", "usage_charges", "usage_entries", "credit_leases", "meter_owners",
                  "credit_pots", "subscriptions", "billing_accounts"):
        op.drop_table(table)

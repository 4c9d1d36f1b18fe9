"""SQLAlchemy table definitions: the database is the source of truth for every credit."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts shared by every process: the auth epoch, the signing secret."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prefix: Mapped[str] = mapped_column(String(32))  # shown to humans; never enough to authenticate
    hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Per-key settings (stepplan.key_settings; docs/security.md). None / 0: no limit of that kind.
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # billing-clock seconds
    models: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array: the model allowlist
    rpm: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    concurrency: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    credit_limit_daily: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # micro-credits
    credit_limit_monthly: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ip_allow: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array of CIDRs
    labels: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object k → v
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # written in batches
    replaced_by: Mapped[int | None] = mapped_column(Integer, nullable=True)  # set by a rotation

    __table_args__ = (Index("ix_api_keys_hash", "hash"),)


# ---------------------------------------------------------------------------------------------- billing
# Credit amounts are micro-credits (1 Credit = 10^6), money is fen (¥0.01); both integers.
class BillingAccount(Base):
    """One row per account that has billing state: locked first by every change to the
    account's subscriptions and credit pots, so those changes never interleave."""

    __tablename__ = "billing_accounts"
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Subscription(Base):
    __tablename__ = "subscriptions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    plan: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(16))  # monthly | quarterly | yearly
    price_fen: Mapped[int] = mapped_column(BigInteger)  # what this term cost
    term_start: Mapped[int] = mapped_column(BigInteger)
    term_end: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # active | upgraded | ended | cancelled
    pending_plan: Mapped[str | None] = mapped_column(String(64), nullable=True)  # downgrade at next cycle
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


CREDIT_KINDS = frozenset({"subscription", "topup"})  # pot kinds that hold credit; the others are window limits


class CreditPot(Base):
    """A bounded amount of credit: a monthly pool, a top-up pack, or a window limit.

    ``used`` is what settled calls consumed (the entries' ``pot_amount`` plus ``usage_charges``);
    ``leased`` is what gateway processes hold for calls in flight (equal to the sum of its
    ``credit_leases``). ``used + leased <= total`` is enforced by every write.
    """

    __tablename__ = "credit_pots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # subscription | topup | window_5h | window_week | key_day | key_month (a key's own Credit limit)
    kind: Mapped[str] = mapped_column(String(16))
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id"), nullable=True)
    cycle: Mapped[int | None] = mapped_column(Integer, nullable=True)  # cycle / window index in the term
    source: Mapped[str] = mapped_column(String(64))  # plan or pack id
    total: Mapped[int] = mapped_column(BigInteger)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    leased: Mapped[int] = mapped_column(BigInteger, default=0)
    starts_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # key_day / key_month: the key

    __table_args__ = (
        UniqueConstraint("subscription_id", "kind", "cycle", name="uq_credit_pots_cycle"),
        Index("uq_credit_pots_key_period", "key_id", "kind", "cycle", "starts_at", unique=True),
        CheckConstraint("used >= 0 AND leased >= 0 AND used + leased <= total", name="ck_credit_pots_bounds"),
        Index("ix_credit_pots_account_expiry", "account_id", "expires_at"),
    )


class MeterOwner(Base):
    """A live gateway process that may hold leases; reaped when it dies."""

    __tablename__ = "meter_owners"
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    pid_start: Mapped[str] = mapped_column(String(32))  # process start time, guards against pid reuse
    started_at: Mapped[int] = mapped_column(BigInteger)
    heartbeat_at: Mapped[int] = mapped_column(BigInteger)
    # As of the last heartbeat: calls in flight, and since when (unix seconds) the process has had
    # none and touched no lease (null while busy). ``stepplan ledger check`` flags a lease still
    # held by a process idle for longer than the idle-return time: credit stranded in it.
    inflight: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    idle_since: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CreditLease(Base):
    __tablename__ = "credit_leases"
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    pot_id: Mapped[int] = mapped_column(ForeignKey("credit_pots.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("amount >= 0", name="ck_credit_leases_amount"),
        Index("ix_credit_leases_pot", "pot_id"),
    )


class UsageEntry(Base):
    """The append-only usage ledger: one row per metered call, keyed by request id."""

    __tablename__ = "usage_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(80), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[int] = mapped_column(Integer)
    requested_model: Mapped[str] = mapped_column(String(128))
    served_model: Mapped[str] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(BigInteger)  # uncached input
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)  # includes reasoning
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    usage_known: Mapped[bool] = mapped_column(Boolean)  # False: counted locally
    rate_input: Mapped[int] = mapped_column(BigInteger)  # micro-credits per token
    rate_cache: Mapped[int] = mapped_column(BigInteger)
    rate_output: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)  # exact price of the usage
    charged: Mapped[int] = mapped_column(BigInteger)  # taken from credit pots
    # The first (usually the only) pot charged and how much; further pots are in usage_charges.
    pot_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pot_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    uncollected: Mapped[int] = mapped_column(BigInteger)  # cost - charged (credit ran out)
    reserved: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(24))
    route_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_byte_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # The client protocol of the call: openai (chat completions) | anthropic | responses.
    protocol: Mapped[str] = mapped_column(String(16), default="openai", server_default="openai")

    __table_args__ = (
        CheckConstraint("charged >= 0 AND uncollected >= 0 AND charged + uncollected = cost",
                        name="ck_usage_entries_amounts"),
        # Every index here is one more B-tree insert per settled call (migration 0010 dropped two).
        Index("ix_usage_entries_account_id", "account_id", "id"),
        # Covers the console's Usage page (one index-only pass over an account's range); its leading
        # (account_id, created_at) also serves every other per-account time range (key limits, /usage).
        Index("ix_usage_entries_account_usage", "account_id", "created_at", "requested_model", "served_model",
              "charged", "uncollected", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
              "reasoning_tokens"),
    )


class UsageCharge(Base):
    """Charges of one ledger entry beyond the pot recorded on the entry itself: a call that
    spilled into a second pot, and window-limit counters."""

    __tablename__ = "usage_charges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(80), index=True)
    pot_id: Mapped[int] = mapped_column(ForeignKey("credit_pots.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("amount > 0", name="ck_usage_charges_amount"),)


class BillingEvent(Base):
    """Money and credit-issue events: subscriptions, renewals, upgrades, downgrades, top-ups,
    monthly issues and closures. Together with the usage ledger it explains every pot."""

    __tablename__ = "billing_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    subscription_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pot_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-credits issued (issue events)
    detail: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[int] = mapped_column(BigInteger)


class ReasoningRecord(Base):
    """The reasoning that led to a tool call, for clients that do not echo it back (DeepSeek-style
    upstreams require it on later turns). Shared by every worker and kept across restarts; expires."""

    __tablename__ = "reasoning_records"
    call_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reasoning: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class StoredResponse(Base):
    """A Responses API answer kept for ``previous_response_id`` and ``GET /responses/{id}`` (``store``
    true), visible to its account only; deleted by the client or when it expires."""

    __tablename__ = "stored_responses"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    previous_response_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(24))
    input_items: Mapped[str] = mapped_column(Text)  # JSON array: this request's input items, with ids
    response: Mapped[str] = mapped_column(Text)  # JSON: the response object, reasoning sealed
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class ConsoleSession(Base):
    """A signed-in web console session (``/console``): the cookie carries a random token, the row
    its SHA-256, so sign-out and expiry hold in every worker and a database copy opens no session."""

    __tablename__ = "console_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's token
    kind: Mapped[str] = mapped_column(String(16))  # holder | operator
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the key a holder signed in with
    admin_fp: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which admin token (a digest)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AdminToken(Base):
    """An admin API token: only its SHA-256 is stored (tokens are high-entropy), with a scope."""

    __tablename__ = "admin_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))  # read | write
    prefix: Mapped[str] = mapped_column(String(32))  # shown to humans
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditRecord(Base):
    """One administrative change: who (admin token name or ``cli:<user>``), when (billing clock),
    what, and the target's state before and after (JSON, never a secret)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(160))
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)

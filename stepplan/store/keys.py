"""API keys' settings: update, rotation, the listing view, last-use times, and the key Credit-limit
pots' closing. Plain functions over a session, for the CLI, the admin API and the console alike;
:mod:`stepplan.store.accounts` keeps creation, revocation and lookup; issuing the limit pots is
billing's job (:mod:`stepplan.billing.key_limits`).

A key's Credit limit is a window pot like the plan's 5-hour and weekly windows: every call of
the key leases from it and is charged to it through the same reservation path as the account's
credit (:mod:`stepplan.billing.leasing`), so no number of processes can overdraw it. One pot per
key per calendar day / month (UTC, billing clock), issued on the key's first call of the period
with ``limit − what the key already consumed in the period``. Changing or clearing a limit
closes the live pot; the next call issues one for the rest of the period.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .accounts import create_key
from .meta import bump_auth_epoch
from .models import Account, ApiKey, BillingEvent, CreditPot
from .sql import table
from .subscriptions import lock_account

KEY_DAY, KEY_MONTH = "key_day", "key_month"
KEY_KINDS = frozenset({KEY_DAY, KEY_MONTH})
JSON_COLUMNS = frozenset({"models", "ip_allow", "labels"})


class KeyNotFound(LookupError):
    pass


def credits_exact(micro: int) -> str:
    """Micro-credits as an exact Credit amount: 12500000 → ``12.5``."""
    return f"{(Decimal(micro) / 1_000_000).normalize():f}"


# ------------------------------------------------------------------------------------------ views
def key_status(row: ApiKey, now: int) -> str:
    """active | revoked | expired | rotated (replaced, still in its grace period) | replaced."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and now >= row.expires_at:
        return "replaced" if row.replaced_by is not None else "expired"
    return "rotated" if row.replaced_by is not None else "active"


def key_view(row: ApiKey, account: str, now: int) -> dict[str, Any]:
    """A key as the CLI, the admin API and the console show it: never the secret or its hash."""
    def credits(v: int | None) -> str | None:
        return None if v is None else credits_exact(v)

    return {
        "id": row.id, "account": account, "name": row.name, "prefix": row.prefix, "created_at": row.created_at,
        "revoked_at": row.revoked_at, "status": key_status(row, now), "expires_at": row.expires_at,
        "models": json.loads(row.models) if row.models else None, "rpm": row.rpm or None,
        "concurrency": row.concurrency or None, "credit_limit_daily": credits(row.credit_limit_daily),
        "credit_limit_monthly": credits(row.credit_limit_monthly),
        "ip": json.loads(row.ip_allow) if row.ip_allow else None,
        "labels": json.loads(row.labels) if row.labels else {}, "last_used_at": row.last_used_at,
        "replaced_by": row.replaced_by,
    }


def settings_of(row: ApiKey) -> dict[str, Any]:
    """The key's settings as stored values (JSON columns decoded), e.g. for an audit record."""
    return {c: (json.loads(v) if c in JSON_COLUMNS and v else v) for c in (
        "expires_at", "models", "rpm", "concurrency", "credit_limit_daily", "credit_limit_monthly", "ip_allow",
        "labels")
        for v in (getattr(row, c),)}


async def get_key(s: AsyncSession, key_id: int) -> tuple[ApiKey, str] | None:
    row = (await s.execute(select(ApiKey, Account.name).join(Account, Account.id == ApiKey.account_id)
                           .where(ApiKey.id == key_id))).first()
    return (row[0], row[1]) if row else None


# ------------------------------------------------------------------------------------------ changes
async def update_key(s: AsyncSession, key_id: int, changes: dict[str, Any], now: int) -> ApiKey:
    """Apply ``changes`` (api_keys column → value; the cleared value to remove a limit) to an active
    key. Changed Credit limits close the key's live limit pots (see the module docstring)."""
    found = await get_key(s, key_id)
    if found is None or found[0].revoked_at is not None:
        raise KeyNotFound(f"no active key with id {key_id}")
    row = found[0]
    credit_changed = [kind for kind, col in ((KEY_DAY, "credit_limit_daily"), (KEY_MONTH, "credit_limit_monthly"))
                      if col in changes and changes[col] != getattr(row, col)]
    for column, value in changes.items():
        setattr(row, column, json.dumps(value) if column in JSON_COLUMNS and value is not None else value)
    if credit_changed:
        await lock_account(s, row.account_id, now)  # every process reloads the account's pots
        await _close_key_pots(s, row, credit_changed, now)
    await bump_auth_epoch(s)
    await s.flush()
    return row


async def rotate_key(s: AsyncSession, key_id: int, grace: int, now: int) -> tuple[ApiKey, ApiKey, str]:
    """Replace a key by a new one with the same account, name and settings: (old, new, new secret).
    The old key keeps working for ``grace`` seconds (billing clock; 0: revoked at once)."""
    found = await get_key(s, key_id)
    if found is None or found[0].revoked_at is not None:
        raise KeyNotFound(f"no active key with id {key_id}")
    old = found[0]
    if old.replaced_by is not None:
        raise ValueError(f"key {key_id} was already rotated (replaced by key {old.replaced_by}); rotate that one")
    if old.expires_at is not None and old.expires_at <= now:
        raise ValueError(f"key {key_id} has expired; create a new key instead")
    account = await s.get(Account, old.account_id)
    assert account is not None
    new, secret = await create_key(s, account, old.name)
    for column in ("expires_at", "models", "rpm", "concurrency", "credit_limit_daily", "credit_limit_monthly",
                   "ip_allow", "labels"):
        setattr(new, column, getattr(old, column))
    await s.flush()
    old.replaced_by = new.id
    if grace <= 0:
        old.revoked_at = int(time.time())
    else:
        old.expires_at = min(old.expires_at, now + grace) if old.expires_at is not None else now + grace
    await bump_auth_epoch(s)
    await s.flush()
    return old, new, secret


async def record_last_used(s: AsyncSession, used: dict[int, int]) -> None:
    """Write keys' last-use times (key id → billing-clock seconds), one statement for the batch.
    Not a key change: the auth epoch stays, no cache is dropped."""
    if not used:
        return
    keys = table(ApiKey)
    await s.execute(update(keys).where(keys.c.id == bindparam("kid")).values(last_used_at=bindparam("t")),
                    [{"kid": k, "t": t} for k, t in used.items()])


async def _close_key_pots(s: AsyncSession, row: ApiKey, kinds: list[str], now: int) -> None:
    pots = list((await s.execute(select(CreditPot).where(
        CreditPot.key_id == row.id, CreditPot.kind.in_(kinds), CreditPot.expires_at > now))).scalars())
    for pot in pots:
        s.add(BillingEvent(account_id=row.account_id, kind="close", pot_id=pot.id, detail=json.dumps(
            {"reason": "key limit changed", "key_id": row.id, "forfeited": pot.total - pot.used - pot.leased},
            sort_keys=True), created_at=now))
        pot.expires_at = max(pot.starts_at, now)
    await s.flush()


__all__ = ["KEY_KINDS", "KeyNotFound", "credits_exact", "get_key", "key_status", "key_view", "record_last_used",
           "rotate_key", "update_key"]

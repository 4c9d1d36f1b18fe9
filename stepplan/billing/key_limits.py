"""Issuing a key's Credit-limit pots (``key_day`` / ``key_month``, see :mod:`stepplan.store.keys`):
one per key per calendar day / month (UTC, billing clock), issued on the key's first call of the
period with ``limit − what the key already consumed in the period``; reserved and settled like
the plan's windows by :mod:`stepplan.billing.leasing` and :mod:`stepplan.billing.settlement`."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..store.accounts import KeyInfo
from ..store.keys import KEY_DAY, KEY_MONTH
from ..store.models import ApiKey, BillingEvent, CreditPot, UsageEntry
from ..store.sql import dialect_insert, table
from .clock import DAY, add_months, iso


def period(kind: str, now: int) -> tuple[int, int, int]:
    """(cycle, start, end) of the calendar day or month (UTC, billing clock) containing ``now``."""
    if kind == KEY_DAY:
        cycle = now // DAY
        return cycle, cycle * DAY, cycle * DAY + DAY
    d = dt.datetime.fromtimestamp(now, dt.UTC)
    start = int(dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC).timestamp())
    return d.year * 12 + d.month - 1, start, add_months(start, 1)


def limits_of(key: KeyInfo) -> list[tuple[str, int]]:
    """The key's Credit limits: (pot kind, micro-credits)."""
    out = []
    if key.credit_daily is not None:
        out.append((KEY_DAY, key.credit_daily))
    if key.credit_monthly is not None:
        out.append((KEY_MONTH, key.credit_monthly))
    return out


async def _lineage(s: AsyncSession, key_id: int) -> list[int]:
    """The key and the keys it replaced (rotations), so a rotated key's period keeps its consumption."""
    ids, frontier = [key_id], [key_id]
    for _ in range(16):
        rows = list((await s.execute(select(ApiKey.id).where(ApiKey.replaced_by.in_(frontier)))).scalars())
        rows = [r for r in rows if r not in ids]
        if not rows:
            break
        ids += rows
        frontier = rows
    return ids


async def consumed(s: AsyncSession, account_id: int, key_id: int, kind: str, now: int) -> int:
    """What the key consumed in the period so far: ledger charges since its start, plus what calls
    in flight may still charge to the period's closed pots (their leases: an upper bound)."""
    _, start, _ = period(kind, now)
    ids = await _lineage(s, key_id)
    charged = (await s.execute(select(func.coalesce(func.sum(UsageEntry.charged), 0)).where(
        UsageEntry.account_id == account_id, UsageEntry.key_id.in_(ids), UsageEntry.created_at >= start))).scalar()
    leased = (await s.execute(select(func.coalesce(func.sum(CreditPot.leased), 0)).where(
        CreditPot.key_id == key_id, CreditPot.kind == kind, CreditPot.starts_at >= start))).scalar()
    return int(charged or 0) + int(leased or 0)


async def ensure_key_pots(s: AsyncSession, key: KeyInfo, now: int) -> int:
    """Issue the key's limit pots for the current periods where none is live; returns how many were
    issued (another process may have issued the same pot first: then it is not issued twice)."""
    issued = 0
    for kind, limit in limits_of(key):
        live = (await s.execute(select(CreditPot.id).where(
            CreditPot.key_id == key.key_id, CreditPot.kind == kind, CreditPot.starts_at <= now,
            CreditPot.expires_at > now).limit(1))).scalar_one_or_none()
        if live is not None:
            continue
        cycle, start, end = period(kind, now)
        closed_before = (await s.execute(select(func.count()).where(
            CreditPot.key_id == key.key_id, CreditPot.kind == kind, CreditPot.starts_at >= start))).scalar()
        starts = now if closed_before else start  # after a limit change: the rest of the period
        total = max(0, limit - await consumed(s, key.account_id, key.key_id, kind, now))
        values = {"account_id": key.account_id, "kind": kind, "subscription_id": None, "cycle": cycle,
                  "source": f"key:{key.key_id}", "total": total, "used": 0, "leased": 0, "starts_at": starts,
                  "expires_at": end, "created_at": now, "key_id": key.key_id}
        stmt = (dialect_insert(s, table(CreditPot)).values(**values)
                .on_conflict_do_nothing(index_elements=["key_id", "kind", "cycle", "starts_at"])
                .returning(table(CreditPot).c.id))
        pot_id = (await s.execute(stmt)).scalar_one_or_none()
        if pot_id is None:
            continue
        issued += 1
        s.add(BillingEvent(account_id=key.account_id, kind="issue", pot_id=pot_id, credits=total,
                           detail=json.dumps({"pot_kind": kind, "key_id": key.key_id, "limit": limit,
                                              "period_end": iso(end)}, sort_keys=True), created_at=now))
    return issued

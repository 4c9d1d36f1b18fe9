"""The billing tables an administrator's actions write: ``billing_accounts`` (the per-account
lock), ``subscriptions``, ``billing_events`` and the issuing side of ``credit_pots``
(:mod:`stepplan.store.ledger` owns their ``used`` and ``leased`` columns: metering).

Every change to one account's billing state runs in one transaction that starts with
:func:`lock_account`: it writes the account's ``billing_accounts`` row. On SQLite that first
write takes the database write lock; on PostgreSQL it locks the row. Either way two changes
to one account never interleave, and the transaction reads a stable state. It also bumps the
shared billing epoch, so that every gateway process reloads the account before its next
reservation. The business rules (terms, cycles, upgrades) are in
:mod:`stepplan.billing.subscriptions`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .meta import bump_billing_epoch
from .models import BillingAccount, BillingEvent, CreditPot, Subscription
from .sql import rowcount, table, upsert


async def lock_account(s: AsyncSession, account_id: int, now: int) -> None:
    """Serialise billing changes of one account (see module docstring)."""
    res = await s.execute(update(BillingAccount).where(BillingAccount.account_id == account_id)
                          .values(version=BillingAccount.version + 1, updated_at=now))
    if not rowcount(res):
        await s.execute(upsert(s, table(BillingAccount), {"account_id": account_id, "version": 1,
                                                             "updated_at": now},
                               ["account_id"], {"version": table(BillingAccount).c.version + 1,
                                                "updated_at": now}))
    await bump_billing_epoch(s)


def add_event(s: AsyncSession, account_id: int, kind: str, now: int, *, sub: Subscription | None = None,
              pot: CreditPot | None = None, plan: str | None = None, amount_fen: int = 0, credits: int = 0,
              **detail: Any) -> None:
    """Record a billing event (written with the transaction)."""
    s.add(BillingEvent(account_id=account_id, kind=kind, subscription_id=sub.id if sub else None,
                       pot_id=pot.id if pot else None, plan=plan or (sub.plan if sub else None),
                       amount_fen=amount_fen, credits=credits, detail=json.dumps(detail, sort_keys=True),
                       created_at=now))


# ------------------------------------------------------------------------------------------ subscriptions
async def current_subscription(s: AsyncSession, account_id: int) -> Subscription | None:
    """The account's subscription in status ``active`` (its term may have run out: see ensure_current)."""
    q = (select(Subscription).where(Subscription.account_id == account_id, Subscription.status == "active")
         .order_by(Subscription.id.desc()).limit(1))
    return (await s.execute(q)).scalar_one_or_none()


async def add_subscription(s: AsyncSession, account_id: int, plan: str, period: str, price_fen: int,
                           term_start: int, term_end: int, auto_renew: bool, now: int) -> Subscription:
    """A new active term (flushed: it has its id)."""
    sub = Subscription(account_id=account_id, plan=plan, period=period, price_fen=price_fen, term_start=term_start,
                       term_end=term_end, status="active", auto_renew=auto_renew, created_at=now)
    s.add(sub)
    await s.flush()
    return sub


# ------------------------------------------------------------------------------------------ credit pots
async def add_pot(s: AsyncSession, account_id: int, kind: str, subscription_id: int | None, cycle: int | None,
                  source: str, total: int, starts_at: int, expires_at: int, now: int) -> CreditPot:
    """A new pot with nothing used or leased (flushed: it has its id)."""
    pot = CreditPot(account_id=account_id, kind=kind, subscription_id=subscription_id, cycle=cycle, source=source,
                    total=total, used=0, leased=0, starts_at=starts_at, expires_at=expires_at, created_at=now)
    s.add(pot)
    await s.flush()
    return pot


async def cycle_pot(s: AsyncSession, sub_id: int, kind: str, cycle: int) -> CreditPot | None:
    """A subscription's pot of ``kind`` for cycle (or window index) ``cycle``, if issued."""
    q = select(CreditPot).where(CreditPot.subscription_id == sub_id, CreditPot.kind == kind, CreditPot.cycle == cycle)
    return (await s.execute(q)).scalar_one_or_none()


async def open_pots(s: AsyncSession, sub_id: int, now: int) -> list[CreditPot]:
    """A subscription's pots that have not expired at ``now``, by id."""
    q = (select(CreditPot).where(CreditPot.subscription_id == sub_id, CreditPot.expires_at > now)
         .order_by(CreditPot.id))
    return list((await s.execute(q)).scalars())


async def live_pots(s: AsyncSession, account_id: int, now: int) -> list[CreditPot]:
    """Pots usable at ``now``: credit pools, packs and current windows; earliest expiry first."""
    q = (select(CreditPot).where(CreditPot.account_id == account_id, CreditPot.expires_at > now,
                                 CreditPot.starts_at <= now)
         .order_by(CreditPot.expires_at, CreditPot.id))
    return list((await s.execute(q)).scalars())

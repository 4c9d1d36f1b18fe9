"""Read-only aggregates over the ledger tables for ``stepplan ledger check``
(:mod:`stepplan.billing.check` decides what is a problem). Every query aggregates in the
database: no table is loaded into memory."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from .models import CREDIT_KINDS, BillingEvent, CreditLease, CreditPot, MeterOwner, UsageCharge, UsageEntry


async def pot_balances(s: AsyncSession) -> list[Any]:
    """Per pot: (id, account_id, kind, total, used, leased, the sum of its charges (entries' inline
    ``pot_amount`` plus ``usage_charges``), the sum of its lease rows, the credit its ``issue``
    events issued, the number of those events)."""
    inline = select(UsageEntry.pot_id.label("pot_id"), UsageEntry.pot_amount.label("amount")).where(
        UsageEntry.pot_id.is_not(None))
    spills = select(UsageCharge.pot_id.label("pot_id"), UsageCharge.amount.label("amount"))
    both = union_all(inline, spills).subquery()
    charged = (select(both.c.pot_id.label("pot_id"), func.sum(both.c.amount).label("n"))
               .group_by(both.c.pot_id).subquery())
    leased = (select(CreditLease.pot_id.label("pot_id"), func.sum(CreditLease.amount).label("n"))
              .group_by(CreditLease.pot_id).subquery())
    issued = (select(BillingEvent.pot_id.label("pot_id"), func.sum(BillingEvent.credits).label("n"),
                     func.count().label("k"))
              .where(BillingEvent.kind == "issue").group_by(BillingEvent.pot_id).subquery())
    p = CreditPot
    q = (select(p.id, p.account_id, p.kind, p.total, p.used, p.leased, func.coalesce(charged.c.n, 0),
                func.coalesce(leased.c.n, 0), func.coalesce(issued.c.n, 0), func.coalesce(issued.c.k, 0))
         .outerjoin(charged, charged.c.pot_id == p.id).outerjoin(leased, leased.c.pot_id == p.id)
         .outerjoin(issued, issued.c.pot_id == p.id))
    return list((await s.execute(q)).all())


async def inconsistent_entries(s: AsyncSession, limit: int) -> list[Any]:
    """Up to ``limit`` ledger entries whose amounts do not add up: (request_id, cost, tokens × rates,
    charged, uncollected, credit charges (inline plus rows), largest window charge)."""
    e = UsageEntry
    credit = (select(UsageCharge.request_id.label("rid"), func.sum(UsageCharge.amount).label("n"))
              .join(CreditPot, CreditPot.id == UsageCharge.pot_id)
              .where(CreditPot.kind.in_(sorted(CREDIT_KINDS))).group_by(UsageCharge.request_id).subquery())
    window = (select(UsageCharge.request_id.label("rid"), func.max(UsageCharge.amount).label("n"))
              .join(CreditPot, CreditPot.id == UsageCharge.pot_id)
              .where(CreditPot.kind.not_in(sorted(CREDIT_KINDS))).group_by(UsageCharge.request_id).subquery())
    recomputed = (e.input_tokens * e.rate_input + e.cache_read_tokens * e.rate_cache
                  + e.cache_write_tokens * e.rate_input + e.output_tokens * e.rate_output)
    credit_total = e.pot_amount + func.coalesce(credit.c.n, 0)
    q = (select(e.request_id, e.cost, recomputed, e.charged, e.uncollected, credit_total,
                func.coalesce(window.c.n, 0))
         .outerjoin(credit, credit.c.rid == e.request_id).outerjoin(window, window.c.rid == e.request_id)
         .where((e.cost != recomputed) | (e.charged + e.uncollected != e.cost) | (e.charged < 0)
                | (e.uncollected < 0) | (credit_total != e.charged) | (e.pot_amount < 0)
                | ((e.pot_id.is_(None)) & (e.pot_amount != 0))
                | (func.coalesce(window.c.n, 0) > e.charged))
         .limit(limit))
    return list((await s.execute(q)).all())


async def stray_charges(s: AsyncSession, limit: int) -> list[str]:
    """Request ids of up to ``limit`` charges that have no ledger entry."""
    q = (select(UsageCharge.request_id).where(UsageCharge.request_id.not_in(select(UsageEntry.request_id)))
         .limit(limit))
    return [rid for (rid,) in (await s.execute(q)).all()]


async def entry_totals(s: AsyncSession) -> tuple[int, int, int]:
    """(ledger entries, micro-credits charged, micro-credits uncollected)."""
    e = UsageEntry
    agg = (await s.execute(select(func.count(), func.coalesce(func.sum(e.charged), 0),
                                  func.coalesce(func.sum(e.uncollected), 0)))).one()
    return int(agg[0]), int(agg[1]), int(agg[2])


async def leases_by_owner(s: AsyncSession) -> list[Any]:
    """Per owner holding lease rows: (owner, number of leases, micro-credits leased)."""
    q = select(CreditLease.owner, func.count(), func.sum(CreditLease.amount)).group_by(CreditLease.owner)
    return list((await s.execute(q)).all())


async def leases_older_than_heartbeat(s: AsyncSession) -> dict[str, int]:
    """Per owner: micro-credits in leases last changed before the owner's last heartbeat (both in
    wall-clock seconds), i.e. leases that heartbeat's activity report speaks for."""
    q = (select(CreditLease.owner, func.sum(CreditLease.amount))
         .join(MeterOwner, MeterOwner.owner == CreditLease.owner)
         .where(CreditLease.updated_at < MeterOwner.heartbeat_at, CreditLease.amount > 0)
         .group_by(CreditLease.owner))
    return {owner: int(n or 0) for owner, n in (await s.execute(q)).all()}

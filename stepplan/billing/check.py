"""``stepplan ledger check``: prove that every balance is explained by the ledger.

Checked, all with aggregate SQL (no table is loaded into memory):

1. every pot's ``used`` equals the sum of the charges against it (each entry's inline
   ``pot_amount`` plus its ``usage_charges`` rows), and its
   ``leased`` equals the sum of its lease rows; ``0 <= used``, ``0 <= leased`` and
   ``used + leased <= total`` (no overdraft);
2. every pot's ``total`` equals the credit its single ``issue`` event issued;
3. every ledger entry's ``cost`` equals its tokens × the rates recorded with it,
   ``charged + uncollected = cost``, and ``charged`` equals its charges on credit pots
   (inline plus rows; window charges never exceed it); every charge belongs to an entry;
4. no lease is held by a dead process (one whose pid is gone on this host, whose
   heartbeat is older than the TTL, or that has no owner row): such a lease would be
   leaked credit. A running gateway reclaims these at start-up and every sweep;
5. no lease is held by a live process that, as of its last heartbeat, had nothing in
   flight for longer than the idle-return time (plus 2 s of clock granularity), where the
   lease is older than that heartbeat: such a process returns every idle lease, so one
   still held is credit stranded by a bug.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from ..store import ledger
from ..store.models import BillingEvent, CreditLease, CreditPot, MeterOwner, UsageCharge, UsageEntry
from .state import CREDIT_KINDS

MAX_LISTED = 50


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str) -> None:
        if len(self.problems) < MAX_LISTED * 8:
            self.problems.append(msg)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "stats": self.stats}


async def check_ledger(s: AsyncSession, owner_ttl: float = 30.0, idle_seconds: float = 2.0) -> Report:
    r = Report()
    await _pots(s, r)
    await _entries(s, r)
    await _leases(s, r, owner_ttl, idle_seconds)
    return r


async def _pots(s: AsyncSession, r: Report) -> None:
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
    n = 0
    totals = {"issued": 0, "used": 0, "leased": 0}
    for pid, acct, kind, total, used, leased_n, sum_charged, sum_leased, sum_issued, n_issue in (
            await s.execute(q)).all():
        n += 1
        if kind in CREDIT_KINDS:
            totals["issued"] += total
            totals["used"] += used
            totals["leased"] += leased_n
        if used != sum_charged:
            r.add(f"pot {pid} (account {acct}, {kind}): used {used} != charges {sum_charged}")
        if leased_n != sum_leased:
            r.add(f"pot {pid} (account {acct}, {kind}): leased {leased_n} != leases {sum_leased}")
        if used < 0 or leased_n < 0 or used + leased_n > total:
            r.add(f"pot {pid} (account {acct}, {kind}): overdrawn: used {used} + leased {leased_n} > total {total}")
        if n_issue != 1 or sum_issued != total:
            r.add(f"pot {pid} (account {acct}, {kind}): total {total} but {n_issue} issue event(s) for {sum_issued}")
    r.stats["pots"] = n
    r.stats.update({f"credit_{k}_micro": v for k, v in totals.items()})


async def _entries(s: AsyncSession, r: Report) -> None:
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
         .limit(MAX_LISTED))
    for rid, cost, recomp, charged, uncollected, credit_n, window_n in (await s.execute(q)).all():
        r.add(f"entry {rid}: cost {cost} (tokens × rates = {recomp}), charged {charged}, uncollected "
              f"{uncollected}, credit charges {credit_n}, window charge {window_n}")
    stray = (select(UsageCharge.request_id).where(UsageCharge.request_id.not_in(select(e.request_id)))
             .limit(MAX_LISTED))
    for (rid,) in (await s.execute(stray)).all():
        r.add(f"charge for request {rid} has no ledger entry")
    agg = (await s.execute(select(func.count(), func.coalesce(func.sum(e.charged), 0),
                                  func.coalesce(func.sum(e.uncollected), 0)))).one()
    r.stats.update({"entries": int(agg[0]), "charged_micro": int(agg[1]), "uncollected_micro": int(agg[2])})


async def _leases(s: AsyncSession, r: Report, owner_ttl: float, idle_seconds: float) -> None:
    owners = {o.owner: o for o in (await s.execute(select(MeterOwner))).scalars()}
    wall, host = int(time.time()), ledger.host_id()
    q = select(CreditLease.owner, func.count(), func.sum(CreditLease.amount)).group_by(CreditLease.owner)
    # per owner: leases unchanged since before its last heartbeat (that heartbeat's idle report covers them)
    stale = dict((await s.execute(
        select(CreditLease.owner, func.sum(CreditLease.amount)).join(MeterOwner, MeterOwner.owner == CreditLease.owner)
        .where(CreditLease.updated_at < MeterOwner.heartbeat_at, CreditLease.amount > 0)
        .group_by(CreditLease.owner))).all())
    live = 0
    for owner, n, amount in (await s.execute(q)).all():
        o = owners.get(owner)
        if o is None:
            r.add(f"{n} lease(s) for {amount} micro-credits held by unknown process {owner[:12]} (leaked)")
        elif ledger.owner_is_dead(o, wall, owner_ttl, host):
            r.add(f"{n} lease(s) for {amount} micro-credits held by dead process {owner[:12]} "
                  f"(pid {o.pid} on {o.host}) (leaked; a running gateway reclaims them)")
        else:
            live += int(amount or 0)
            idle = o.heartbeat_at - o.idle_since if o.idle_since is not None and not o.inflight else 0
            held = int(stale.get(owner) or 0)  # a lease taken after the heartbeat is not judged by it
            if held and idle > idle_seconds + 2:
                r.add(f"lease(s) for {held} micro-credits held by live process {owner[:12]} (pid {o.pid} on "
                      f"{o.host}) with nothing in flight for {idle} s (stranded: idle leases are returned after "
                      f"{idle_seconds:g} s)")
    r.stats["live_processes"] = len(owners)
    r.stats["leased_by_live_processes_micro"] = live

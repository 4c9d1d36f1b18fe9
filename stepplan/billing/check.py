"""``stepplan ledger check``: prove that every balance is explained by the ledger.

Checked, all with aggregate SQL (no table is loaded into memory; the queries are in
:mod:`stepplan.store.audit`):

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

from sqlalchemy.ext.asyncio import AsyncSession

from ..store import audit, ledger
from ..store.models import CREDIT_KINDS

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
    n = 0
    totals = {"issued": 0, "used": 0, "leased": 0}
    for pid, acct, kind, total, used, leased_n, sum_charged, sum_leased, sum_issued, n_issue in (
            await audit.pot_balances(s)):
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
    for rid, cost, recomp, charged, uncollected, credit_n, window_n in await audit.inconsistent_entries(
            s, MAX_LISTED):
        r.add(f"entry {rid}: cost {cost} (tokens × rates = {recomp}), charged {charged}, uncollected "
              f"{uncollected}, credit charges {credit_n}, window charge {window_n}")
    for rid in await audit.stray_charges(s, MAX_LISTED):
        r.add(f"charge for request {rid} has no ledger entry")
    entries, charged_micro, uncollected_micro = await audit.entry_totals(s)
    r.stats.update({"entries": entries, "charged_micro": charged_micro, "uncollected_micro": uncollected_micro})


async def _leases(s: AsyncSession, r: Report, owner_ttl: float, idle_seconds: float) -> None:
    owners = {o.owner: o for o in await ledger.list_owners(s)}
    wall, host = int(time.time()), ledger.host_id()
    stale = await audit.leases_older_than_heartbeat(s)  # that heartbeat's idle report covers them
    live = 0
    for owner, n, amount in await audit.leases_by_owner(s):
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

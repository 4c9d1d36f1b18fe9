"""The metering writes: owners, leases and the usage ledger.

Invariants every statement here keeps (and ``stepplan ledger check`` verifies):

* ``pot.used + pot.leased <= pot.total`` (also a CHECK constraint);
* ``pot.leased`` = the sum of the pot's ``credit_leases`` rows;
* ``pot.used`` = the sum of the charges against the pot: ledger entries' inline
  ``pot_amount`` (their first pot) plus ``usage_charges`` rows (spills, windows).

Lock order, to rule out deadlocks (pitfall 25): a transaction touches the owner row
first, then pots in ascending id order, then lease rows in ascending pot order. The
first statement of every write transaction is a write, so on SQLite it takes the write
lock at once (no read-then-upgrade ``SQLITE_BUSY``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import CreditLease, CreditPot, MeterOwner, UsageCharge, UsageEntry
from .sql import dialect, rowcount, table, upsert

POTS = table(CreditPot)
LEASES = table(CreditLease)
ENTRIES = table(UsageEntry)
CHARGES = table(UsageCharge)


LEASE_SHARE = 8  # a lease's slack takes at most this fraction of what is left


class LeaseLost(Exception):
    """This process's lease on a pot is gone (it was reaped as dead)."""

    def __init__(self, pot_id: int):
        super().__init__(f"lease on pot {pot_id} was reclaimed")
        self.pot_id = pot_id


# ------------------------------------------------------------------------------------------------ owners
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def host_id() -> str:
    return f"{socket.gethostname()}/{_boot_id()}"[:255]


def pid_start(pid: int) -> str:
    """The process's start time since boot (clock ticks); '' when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = pid_start(pid)
    return not (start and now and now != start)


def owner_is_dead(row: Any, now: int, ttl: float, host: str) -> bool:
    """Dead: on this host and its process is gone, or its heartbeat is older than ``ttl``."""
    if row.host == host and not pid_alive(row.pid, row.pid_start):
        return True
    return now - row.heartbeat_at > ttl


async def register_owner(s: AsyncSession, owner: str, now: int) -> None:
    pid = os.getpid()
    s.add(MeterOwner(owner=owner, host=host_id(), pid=pid, pid_start=pid_start(pid), started_at=now,
                     heartbeat_at=now, inflight=0, idle_since=now))


async def heartbeat(s: AsyncSession, owner: str, now: int, inflight: int = 0, idle_since: int | None = None) -> bool:
    """Record that ``owner`` is alive and how busy it is. False when it was reaped (declared
    dead) by another process."""
    res = await s.execute(update(MeterOwner).where(MeterOwner.owner == owner)
                          .values(heartbeat_at=now, inflight=inflight, idle_since=idle_since))
    return bool(rowcount(res))


async def list_owners(s: AsyncSession) -> list[Any]:
    return list((await s.execute(select(MeterOwner))).scalars())


async def orphan_lease_owners(s: AsyncSession) -> list[str]:
    """Owners that hold leases but have no owner row (reaped, then leased again)."""
    q = (select(CreditLease.owner).distinct()
         .where(CreditLease.owner.not_in(select(MeterOwner.owner))))
    return list((await s.execute(q)).scalars())


async def reap(s: AsyncSession, owner: str, *, stale_before: int | None) -> int:
    """Return every lease of a dead ``owner`` to its pot; returns the micro-credits freed.

    ``stale_before``: only reap if the owner's heartbeat is still older than this (it may
    have come back); ``None`` reaps unconditionally (its process is known to be gone).
    """
    q = delete(MeterOwner).where(MeterOwner.owner == owner)
    if stale_before is not None:
        q = q.where(MeterOwner.heartbeat_at < stale_before)
    res = await s.execute(q)
    if not rowcount(res) and stale_before is not None:
        exists = (await s.execute(select(MeterOwner.owner).where(MeterOwner.owner == owner))).first()
        if exists:
            return 0  # it heartbeated in the meantime: alive after all
    pot_ids = sorted((await s.execute(select(CreditLease.pot_id).where(CreditLease.owner == owner))).scalars())
    if not pot_ids:
        return 0
    if dialect(s) == "postgresql":
        await s.execute(select(CreditPot.id).where(CreditPot.id.in_(pot_ids)).order_by(CreditPot.id)
                        .with_for_update())
    rows = (await s.execute(delete(CreditLease).where(CreditLease.owner == owner)
                            .returning(CreditLease.pot_id, CreditLease.amount))).all()
    freed = 0
    for pot_id, amount in sorted(rows):
        if amount:
            await s.execute(update(CreditPot).where(CreditPot.id == pot_id)
                            .values(leased=CreditPot.leased - amount))
            freed += amount
    return freed


# ------------------------------------------------------------------------------------------------ leases
@dataclass(slots=True)
class PotRow:
    total: int
    used: int
    leased: int
    expires_at: int

    @property
    def free(self) -> int:
        return self.total - self.used - self.leased


async def lease(s: AsyncSession, owner: str, pot_id: int, need: int, slack: int, now: int) -> tuple[int, PotRow | None]:
    """Lease from a live pot, atomically: ``need`` (or what is left, if less) plus up to
    ``slack`` more, never more than 1/LEASE_SHARE of what would remain after ``need``, so
    other processes keep room when credit runs low. Returns (micro-credits leased, the pot's new state). Caller commits.

    The pot row is locked first (PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: a no-op
    write takes the database write lock), so the read and the update cannot race with
    another process and no retry loop is needed.
    """
    pots = POTS.c
    if dialect(s) == "postgresql":
        q = select(pots.total, pots.used, pots.leased, pots.expires_at).where(pots.id == pot_id).with_for_update()
    else:
        await s.execute(update(POTS).where(pots.id == pot_id).values(leased=pots.leased))
        q = select(pots.total, pots.used, pots.leased, pots.expires_at).where(pots.id == pot_id)
    row = (await s.execute(q)).first()
    if row is None:
        return 0, None
    cur = PotRow(*row)
    if cur.expires_at <= now or cur.free <= 0:
        return 0, cur
    got = min(need, cur.free)
    grant = got + min(max(0, slack), (cur.free - got) // LEASE_SHARE)
    await s.execute(update(POTS).where(pots.id == pot_id).values(leased=pots.leased + grant))
    wall = int(time.time())  # lease rows are bookkeeping: wall clock, like the owners' heartbeats
    await s.execute(upsert(s, LEASES, {"owner": owner, "pot_id": pot_id, "amount": grant, "updated_at": wall},
                           ["owner", "pot_id"], {"amount": LEASES.c.amount + grant, "updated_at": wall}))
    return grant, PotRow(cur.total, cur.used, cur.leased + grant, cur.expires_at)


async def return_lease(s: AsyncSession, owner: str, pot_id: int, amount: int, now: int) -> None:
    """Give ``amount`` of a lease back to its pot. Raises LeaseLost if we no longer hold it."""
    await s.execute(update(CreditPot).where(CreditPot.id == pot_id).values(leased=CreditPot.leased - amount))
    res = await s.execute(update(CreditLease)
                          .where(CreditLease.owner == owner, CreditLease.pot_id == pot_id,
                                 CreditLease.amount >= amount)
                          .values(amount=CreditLease.amount - amount, updated_at=int(time.time())))
    if rowcount(res) != 1:
        raise LeaseLost(pot_id)
    await s.execute(delete(CreditLease).where(CreditLease.owner == owner, CreditLease.pot_id == pot_id,
                                              CreditLease.amount == 0))


async def release_all(s: AsyncSession, owner: str) -> int:
    """Graceful shut-down: return every lease and remove the owner row."""
    return await reap(s, owner, stale_before=None)


# ------------------------------------------------------------------------------------------------ extras
@dataclass(slots=True, eq=False)
class Extra:
    """The part of a call's cost that its process's lease could not cover (a call that cost more
    than it reserved, near exhaustion or with several processes). The settlement transaction takes
    it from the pots' *free* credit (``total - used - leased``), earliest expiry first, never more
    than is free and never more than a window limit has left; only what truly does not exist stays
    ``uncollected``."""

    entry: dict[str, Any]  # the ledger entry it belongs to (never mutated: the writer writes a copy)
    want: int
    credit: Sequence[int]  # credit pot ids in deduction order
    windows: Sequence[int] = ()  # window-limit pot ids charged alongside
    got: int = 0  # set by the writer when the transaction commits


def extra_pots(extras: Sequence[Extra]) -> list[int]:
    return sorted({p for x in extras for p in (*x.credit, *x.windows)})


def plan_extras(extras: Sequence[Extra], free: dict[int, int], entries: Sequence[dict[str, Any]],
                charges: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, int]]:
    """Pure: given each pot's free credit (read under the write lock), decide what every extra
    takes and return (entries, charges, pot id → micro-credits added to ``used``) to write instead
    of the inputs. Entries with an extra are copied, so a rolled-back attempt can be planned again."""
    free = dict(free)
    added: dict[int, int] = {}
    entries = list(entries)
    charges = [dict(c) for c in charges]
    where = {id(e): i for i, e in enumerate(entries)}
    for x in extras:
        x.got = 0
        want = x.want
        for w in x.windows:
            want = min(want, max(0, free.get(w, 0)))
        taken: list[tuple[int, int]] = []
        for pot_id in x.credit:
            if want <= 0:
                break
            t = min(want, max(0, free.get(pot_id, 0)))
            if t:
                free[pot_id] -= t
                added[pot_id] = added.get(pot_id, 0) + t
                taken.append((pot_id, t))
                want -= t
        got = sum(t for _, t in taken)
        if not got:
            continue
        for w in x.windows:
            free[w] = free.get(w, 0) - got
            added[w] = added.get(w, 0) + got
            taken.append((w, got))
        i = where[id(x.entry)]
        e = entries[i] = dict(x.entry)
        e["charged"] += got
        e["uncollected"] -= got
        rid = e["request_id"]
        for pot_id, t in taken:
            if e.get("pot_id") is None and pot_id in x.credit:
                e["pot_id"], e["pot_amount"] = pot_id, t
            elif e.get("pot_id") == pot_id:
                e["pot_amount"] += t
            else:
                row = next((c for c in charges if c["request_id"] == rid and c["pot_id"] == pot_id), None)
                if row is None:
                    charges.append({"request_id": rid, "pot_id": pot_id, "amount": t})
                else:
                    row["amount"] += t
        x.got = got
    return entries, charges, added


# ------------------------------------------------------------------------------------------------ ledger
async def write_batch(s: AsyncSession, owner: str, entries: Sequence[dict[str, Any]],
                      charges: Sequence[dict[str, Any]], converted: dict[int, int], now: int,
                      extras: Sequence[Extra] = ()) -> None:
    """One group commit: ledger entries, their pot charges, the lease-to-used conversion, and
    the extras (cost beyond the lease, taken from free credit in this same transaction).

    ``converted`` maps pot id → micro-credits moved from this owner's lease to ``used``.
    Raises LeaseLost (caller rolls back) when a lease no longer covers its conversion.
    """
    pots, leases = POTS.c, LEASES.c
    added: dict[int, int] = {}
    if extras:  # lock the pots first, in id order (the lock order above), then read what is free
        ids = sorted({*extra_pots(extras), *converted})
        q = select(pots.id, pots.total - pots.used - pots.leased).where(pots.id.in_(ids)).order_by(pots.id)
        if dialect(s) == "postgresql":
            q = q.with_for_update(key_share=True)
        else:
            await s.execute(update(POTS).where(pots.id == ids[0]).values(leased=pots.leased))
        free = {pid: int(f) for pid, f in (await s.execute(q)).all()}
        entries, charges, added = plan_extras(extras, free, entries, charges)
    if entries:  # Core statements (executemany): no ORM bookkeeping on the hot path
        await s.execute(insert(ENTRIES), list(entries))
    if charges:
        await s.execute(insert(CHARGES), list(charges))
    for pot_id in sorted({*converted, *added}):
        amount, more = converted.get(pot_id, 0), added.get(pot_id, 0)
        await s.execute(update(POTS).where(pots.id == pot_id)
                        .values(used=pots.used + amount + more, leased=pots.leased - amount))
    for pot_id in sorted(converted):
        amount = converted[pot_id]
        res = await s.execute(update(LEASES)
                              .where(leases.owner == owner, leases.pot_id == pot_id, leases.amount >= amount)
                              .values(amount=leases.amount - amount, updated_at=now))
        if rowcount(res) != 1:
            raise LeaseLost(pot_id)


async def charge_direct(s: AsyncSession, pot_id: int, want: int) -> int:
    """Charge up to ``want`` from a pot's free credit (no lease); returns what was taken.

    Used only for calls whose lease was reclaimed while they ran. The first statement is
    a guarded write, so the read that follows a miss happens under the write lock.
    """
    if want <= 0:
        return 0
    res = await s.execute(update(CreditPot).where(CreditPot.id == pot_id,
                                                  CreditPot.total - CreditPot.used - CreditPot.leased >= want)
                          .values(used=CreditPot.used + want))
    if rowcount(res):
        return want
    q = select(CreditPot.total, CreditPot.used, CreditPot.leased).where(CreditPot.id == pot_id)
    if dialect(s) == "postgresql":
        q = q.with_for_update()
    row = (await s.execute(q)).first()
    if row is None:
        return 0
    take = max(0, min(want, row[0] - row[1] - row[2]))
    if take:
        await s.execute(update(CreditPot).where(CreditPot.id == pot_id).values(used=CreditPot.used + take))
    return take


async def write_entry(s: AsyncSession, entry: dict[str, Any], charges: Sequence[dict[str, Any]]) -> None:
    await s.execute(insert(ENTRIES), [entry])
    if charges:
        await s.execute(insert(CHARGES), list(charges))


async def existing_requests(s: AsyncSession, request_ids: Iterable[str]) -> dict[str, str]:
    """request id → owner for ids already in the ledger."""
    ids = list(request_ids)
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        q = select(UsageEntry.request_id, UsageEntry.owner).where(UsageEntry.request_id.in_(ids[i:i + 500]))
        out.update({r: o for r, o in (await s.execute(q)).all()})
    return out


async def pots_of(s: AsyncSession, pot_ids: Iterable[int]) -> dict[int, PotRow]:
    ids = sorted(set(pot_ids))
    if not ids:
        return {}
    q = select(CreditPot.id, CreditPot.total, CreditPot.used, CreditPot.leased, CreditPot.expires_at).where(
        CreditPot.id.in_(ids))
    return {r[0]: PotRow(*r[1:]) for r in (await s.execute(q)).all()}



# ------------------------------------------------------------------------------------------------ reads
async def usage_by_model(s: AsyncSession, account_id: int, since: int, until: int, model: str | None
                         ) -> list[Any]:
    """Per (requested, served) model in ``[since, until)``, by model: (requested, served, calls, charged,
    uncollected, input, cache read, cache write, output, reasoning tokens); ``model`` matches either."""
    e = UsageEntry
    q = (select(e.requested_model, e.served_model, func.count(), func.sum(e.charged), func.sum(e.uncollected),
                func.sum(e.input_tokens), func.sum(e.cache_read_tokens), func.sum(e.cache_write_tokens),
                func.sum(e.output_tokens), func.sum(e.reasoning_tokens))
         .where(e.account_id == account_id, e.created_at >= since, e.created_at < until)
         .group_by(e.requested_model, e.served_model).order_by(e.requested_model, e.served_model))
    if model:
        q = q.where((e.requested_model == model) | (e.served_model == model))
    return list((await s.execute(q)).all())


async def recent_entries(s: AsyncSession, limit: int, account_id: int | None = None
                         ) -> tuple[list[UsageEntry], list[UsageCharge]]:
    """The newest ``limit`` ledger entries (of one account, if given), newest first, and their
    ``usage_charges`` rows in id order."""
    q = select(UsageEntry).order_by(UsageEntry.id.desc()).limit(limit)
    if account_id is not None:
        q = q.where(UsageEntry.account_id == account_id)
    entries = list((await s.execute(q)).scalars())
    ids = [e.request_id for e in entries]
    if not ids:
        return entries, []
    rows = await s.execute(select(UsageCharge).where(UsageCharge.request_id.in_(ids)).order_by(UsageCharge.id))
    return entries, list(rows.scalars())

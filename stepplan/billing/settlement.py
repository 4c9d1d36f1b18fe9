"""Settlement and group commit: settle a reservation exactly once, and make its ledger entry durable.

``settle`` computes the exact charge in memory (:meth:`AccountState.settle`), builds the ledger
entry and returns a future. With nothing to batch with, an SQLite entry is written right there
(:meth:`Settler._write_now`); otherwise it is queued and the writer task commits queued entries
in batches, one transaction per batch: entries, pot charges, the lease-to-used conversion, and
the *extras* (cost beyond the lease, taken from the pots' free credit in that same transaction:
:class:`~stepplan.store.ledger.Extra`). Charges are converted from lease to ``used`` in the
transaction that writes the entry, so reaping a dead process never double-counts.

A process whose leases were reclaimed (it was reaped) settles *directly*: each entry in its own
transaction, charging what the pots have free (:meth:`Settler._write_direct`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..store import ledger
from ..store.ledger_writer import Conflict, SessionWriter, Transient, Writer
from .core import MeterCore
from .meter import Outcome, Reservation
from .state import AccountState, Settlement

log = logging.getLogger("stepplan.billing")


@dataclass(slots=True)
class _Pending:
    entry: dict[str, Any]
    st: Settlement
    fut: asyncio.Future[None]
    acct: AccountState | None = None


def _nn(n: int) -> int:
    return n if n > 0 else 0


class LedgerObserver(Protocol):
    """Told about every durable ledger entry and group commit (metrics)."""

    def ledger_batch(self, entries: int, seconds: float) -> None: ...

    def ledger_entry(self, entry: dict[str, Any], plan: str | None, charged: int, uncollected: int) -> None: ...


class Settler:
    def __init__(self, core: MeterCore, writer: Writer):
        self.core = core
        self.writer = writer
        self.observer: LedgerObserver | None = None
        self.progress = time.monotonic()  # the last ledger write, or when the queue last became non-empty
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._busy = False  # the writer task is writing (or backing off between attempts)
        self._task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()  # writes of settlements after shut-down
        self._closing = False

    # ================================================================== life cycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="credit-writer")

    def begin_close(self) -> None:
        """Write what is queued now, then stop the writer task."""
        self._closing = True
        self._wake.set()

    async def drain(self, timeout: float) -> None:
        """Wait for the writer task to write everything queued (after :meth:`begin_close`)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("credit writer did not drain in %g s; %d ledger entries not written", timeout,
                          len(self._queue))

    async def close(self) -> None:
        """Close the ledger writer; anything settling after this is written through a session."""
        await self.writer.close()
        self.writer = SessionWriter(self.core.sessions)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def health(self, stall_seconds: float) -> tuple[bool, str]:
        """Whether the ledger writer (group commit) runs and its queue moves (readiness)."""
        task = self._task
        if task is None:
            return False, "the ledger writer has not started"
        if task.done():
            exc = None if task.cancelled() else task.exception()
            return False, f"the ledger writer stopped{f': {exc!r}' if exc else ''}"
        if self._queue and time.monotonic() - self.progress > stall_seconds:
            return False, (f"{len(self._queue)} ledger entries queued and no write for "
                           f"{time.monotonic() - self.progress:.0f}s")
        return True, f"running, {len(self._queue)} queued"

    def _written(self, pending: list[_Pending], got: dict[int, int], seconds: float | None) -> None:
        """Tell the observer what was charged (final: after the extras the transaction collected)."""
        self.progress = time.monotonic()
        obs = self.observer
        if obs is None:
            return
        try:
            if seconds is not None:
                obs.ledger_batch(len(pending), seconds)
            for p in pending:
                e = p.entry
                extra = got.get(id(e), 0)
                plan = p.acct.plan.id if p.acct is not None and p.acct.plan is not None else None
                obs.ledger_entry(e, plan, e["charged"] + extra, e["uncollected"] - extra)
        except Exception:  # metrics must never break settlement
            log.exception("ledger observer failed")

    async def wait_late(self) -> None:
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)

    # ================================================================== settle
    def settle(self, res: Reservation, outcome: Outcome) -> Awaitable[None]:
        core = self.core
        loop = core.loop or asyncio.get_running_loop()
        h = res.hold
        if h is None:
            raise TypeError(f"reservation {res.request_id} was not made by the credit meter")
        if res.settled:
            if h.fut is not None:
                return h.fut
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        res.settled = True
        fut: asyncio.Future[None] = loop.create_future()
        h.fut = fut
        core.inflight.pop(res.request_id, None)
        acct = h.acct
        started = h.started_at
        now = core.clock.now()
        u = outcome.usage
        rates = core.prices.rates(outcome.served.id, started)
        cost = rates.cost(u)
        h.cost = cost  # for the call's log record and span
        core.active = mono = time.monotonic()
        st = acct.settle(h.holds, cost, now, mono)
        core.limiter.leave(acct.account_id)
        if res.key.rate_limited:
            core.limiter.leave(f"k{res.key.key_id}")
        entry = {
            "request_id": res.request_id, "owner": core.owner, "account_id": res.key.account_id,
            "key_id": res.key.key_id, "requested_model": res.requested_model[:128],
            "served_model": outcome.served.id[:128], "input_tokens": _nn(u.input),
            "cache_read_tokens": _nn(u.cache_read), "cache_write_tokens": _nn(u.cache_write),
            "output_tokens": _nn(u.output), "reasoning_tokens": _nn(u.reasoning), "usage_known": u.known,
            "rate_input": rates.input, "rate_cache": rates.cache, "rate_output": rates.output, "cost": cost,
            "charged": st.charge, "uncollected": cost - st.charge, "reserved": res.amount,
            "status": outcome.status[:24], "route_score": outcome.route_score,
            "first_byte_ms": outcome.first_byte_ms, "total_ms": outcome.total_ms, "started_at": started,
            "created_at": now, "protocol": outcome.protocol[:16],
        }
        pending = _Pending(entry, st, fut, acct)
        if self._write_now(pending):
            return fut
        if not self._queue:
            self.progress = time.monotonic()
        self._queue.append(pending)
        if self._task is None or self._task.done():  # shutting down: write it on its own
            task = loop.create_task(self._drain())
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        else:
            self._wake.set()
        return fut

    def _write_now(self, p: _Pending) -> bool:
        """With nothing to batch with (no other call in flight, nothing queued, the writer idle),
        an SQLite ledger write happens right here: the same inline transaction the writer task
        would run, minus two hand-offs through the event loop (concurrency 1's latency). Anything
        unusual (a busy database, a conflict, a lost lease) falls back to the writer, which retries
        and resolves; the failed attempt was rolled back, so nothing is written twice."""
        core = self.core
        write_now = getattr(self.writer, "write_now", None)
        if (write_now is None or core.inflight or self._queue or self._busy or p.st.direct
                or core.cfg.commit_interval > 0 or self._task is None or self._task.done()):
            return False
        entries, charges, converted, extras = self._batch_rows([p])
        t = time.perf_counter()
        try:
            write_now(core.owner, entries, charges, converted, int(time.time()), extras)
        except Exception:
            return False
        core.stats["batches"] += 1
        core.stats["entries"] += 1
        self._report_extras(extras)
        self._written([p], {id(x.entry): x.got for x in extras}, time.perf_counter() - t)
        p.fut.set_result(None)
        return True

    def _report_extras(self, extras: list[ledger.Extra]) -> None:
        for x in extras:
            self.core.stats["extra"] += 1
            if x.got < x.want:
                log.warning("request %s: cost %d exceeds the credit the account has left; %d micro-credits "
                            "uncollected", x.entry["request_id"], x.entry["cost"], x.want - x.got)

    # ================================================================== group commit
    async def _write_loop(self) -> None:
        last, last_size = 0.0, 0
        cfg = self.core.cfg
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                wait = cfg.commit_interval
                if (last_size < cfg.flush_small_batch and len(self._queue) < cfg.flush_small_batch
                        and self.core.inflight):
                    # back-to-back small batches while other calls are still running: let them join;
                    # with nothing else in flight there is nobody to wait for (concurrency 1)
                    wait = max(wait, cfg.flush_gap - (time.monotonic() - last))
                if wait > 0:
                    await asyncio.sleep(wait)
            last, last_size = time.monotonic(), len(self._queue)
            await self._drain()
            if self._closing and not self._queue:
                return

    async def _drain(self) -> None:
        self._busy = True
        try:
            while self._queue:
                batch = self._queue[:self.core.cfg.max_batch]
                del self._queue[:self.core.cfg.max_batch]
                await self._flush(batch)
        finally:
            self._busy = False

    async def _flush(self, batch: list[_Pending]) -> None:
        """Write one batch durably; retries transient errors until it is written."""
        core = self.core
        delay, bugs = 0.001, 0
        direct = [p for p in batch if p.st.direct]
        pending = [p for p in batch if not p.st.direct]
        while pending:
            entries, charges, converted, extras = self._batch_rows(pending)
            t = time.perf_counter()
            try:
                await self.writer.write(core.owner, entries, charges, converted, int(time.time()), extras)
                core.stats["batches"] += 1
                core.stats["entries"] += len(pending)
                self._report_extras(extras)
                self._written(pending, {id(x.entry): x.got for x in extras}, time.perf_counter() - t)
                break
            except ledger.LeaseLost as exc:
                log.error("lease on pot %s is gone (this process was reaped); settling directly", exc.pot_id)
                await core.renew()
                for p in pending:
                    p.st.to_direct()
                direct += pending
                pending = []
            except Conflict:
                pending, more_direct = await self._resolve_conflicts(pending)
                direct += more_direct
            except (Transient, SQLAlchemyError, OSError) as exc:
                # SQLite "database is locked" (another connection is writing) clears in a millisecond or two
                (log.debug if delay < 0.05 else log.warning)(
                    "ledger write failed (%s: %s); retrying in %.3fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            except Exception:  # a bug, not the database: never hang the calls waiting on this batch
                if len(pending) > 1:  # one bad entry must not take the others with it
                    log.exception("ledger batch of %d failed unexpectedly; writing its entries one by one",
                                  len(pending))
                    for p in pending:
                        await self._flush([p])
                    pending = []
                    break
                bugs += 1
                log.exception("ledger write failed unexpectedly (attempt %d)", bugs)
                if bugs >= 5:
                    for p in pending:
                        log.error("UNWRITTEN LEDGER ENTRY %s", {k: v for k, v in p.entry.items()})
                        self._unwind(p)
                    pending = []
                await asyncio.sleep(delay)
        try:
            for p in direct:
                await self._write_direct(p)
        finally:
            for p in batch:
                if not p.fut.done():
                    p.fut.set_result(None)

    @staticmethod
    def _unwind(p: _Pending) -> None:
        """An entry that can never be written: give its charge back to this process's leases, so
        the credit is not stranded in a lease nobody will use (the idle return hands it back)."""
        if p.acct is None or p.st.direct:
            return
        for pot_id, x in (*p.st.credit, *p.st.windows):
            pot = p.acct.pots.get(pot_id)
            if pot is not None:
                pot.leased += x
                pot.used -= x

    @staticmethod
    def _batch_rows(pending: list[_Pending]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, int],
                                                      list[ledger.Extra]]:
        entries: list[dict[str, Any]] = []
        charges: list[dict[str, Any]] = []
        converted: dict[int, int] = defaultdict(int)
        extras: list[ledger.Extra] = []
        for p in pending:
            e = p.entry
            entries.append(e)
            rid = e["request_id"]
            if p.st.extra:
                extras.append(ledger.Extra(e, p.st.extra, p.st.extra_credit, p.st.extra_windows))
            credit = p.st.credit
            if credit:  # the first pot goes on the entry itself; only spills and windows need rows
                e["pot_id"], e["pot_amount"] = credit[0]
                converted[credit[0][0]] += credit[0][1]
            else:
                e["pot_id"], e["pot_amount"] = None, 0
            for pot_id, x in (*credit[1:], *p.st.windows):
                charges.append({"request_id": rid, "pot_id": pot_id, "amount": x})
                converted[pot_id] += x
        return entries, charges, converted, extras

    async def _resolve_conflicts(self, pending: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """An integrity error: drop entries already in the ledger (a repeated settlement), give
        a colliding request id from another process a suffix, or fall back to direct writes."""
        core = self.core
        async with core.sessions() as s:
            existing = await ledger.existing_requests(s, [p.entry["request_id"] for p in pending])
        if not existing:
            # A lease no longer covers its conversion: most likely this process was reaped as dead.
            log.error("ledger batch violated a constraint without a duplicate id; settling each call directly")
            await core.heartbeat()  # re-registers under a new owner if we were reaped
            for p in pending:
                p.st.to_direct()
            return [], pending
        keep: list[_Pending] = []
        for p in pending:
            rid = p.entry["request_id"]
            if rid not in existing:
                keep.append(p)
            elif existing[rid] == p.entry["owner"]:
                log.warning("request %s was already settled; ignoring the repeat", rid)
                p.fut.set_result(None)
            else:
                p.entry["request_id"] = f"{rid}~{core.owner[:8]}"
                keep.append(p)
        return keep, []

    # ================================================================== direct writes
    async def _write_direct(self, p: _Pending) -> None:
        """Charge without a lease (this process's leases were reclaimed): take what pots have free."""
        core = self.core
        core.stats["direct"] += 1
        e, st = p.entry, p.st
        delay = 0.01
        for _ in range(200):
            try:
                async with core.sessions() as s:
                    taken: list[tuple[int, int]] = []
                    left = e["cost"]
                    for pot_id in st.direct_credit:
                        took = await ledger.charge_direct(s, pot_id, left)
                        if took:
                            taken.append((pot_id, took))
                            left -= took
                    charged = e["cost"] - left
                    for pot_id in st.direct_windows:
                        took = await ledger.charge_direct(s, pot_id, charged)
                        if took:
                            taken.append((pot_id, took))
                    first, rest = (taken[0], taken[1:]) if taken and taken[0][0] in st.direct_credit else (
                        (None, 0), taken)
                    rows = [{"request_id": e["request_id"], "pot_id": i, "amount": x} for i, x in rest]
                    await ledger.write_entry(s, {**e, "charged": charged, "uncollected": left,
                                                 "pot_id": first[0], "pot_amount": first[1]}, rows)
                    await s.commit()
                self._written([p], {id(e): charged - e["charged"]}, None)
                return
            except IntegrityError:
                async with core.sessions() as s:
                    existing = await ledger.existing_requests(s, [e["request_id"]])
                if existing.get(e["request_id"]) == e["owner"]:
                    return
                e["request_id"] = f"{e['request_id']}~{core.owner[:8]}"
            except (SQLAlchemyError, OSError) as exc:
                log.warning("direct ledger write failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            except Exception:
                log.exception("direct ledger write failed unexpectedly")
                break
        log.error("UNWRITTEN LEDGER ENTRY %s", e)

"""The credit meter: reserve before a call, settle exactly once after it.

How it stays exact, never overdrawn and fast (design-notes §2):

* **Leases.** A process leases a slice of a pot's credit with one guarded UPDATE
  (``leased = leased + x WHERE total - used - leased >= x``) and reserves calls
  against it in memory. The database never lets leases exceed what is left, so any
  number of processes sharing a database cannot overdraw together.
* **Group commit.** ``settle`` computes the exact charge in memory, enqueues the ledger
  entry and returns a future; a writer task commits queued entries in batches (one
  transaction per batch: entries, pot charges, lease-to-used conversion). The pipeline
  awaits the future before it sends a call's last byte, so a finished call's charge is
  always durable; a client that went away is billed without anyone waiting.
* **Crash recovery.** Each process registers an owner row and heartbeats. Leases of a
  dead owner (its pid is gone on this host, or its heartbeat is older than the TTL)
  are returned to their pots at start-up and by a periodic sweep. Charges are
  converted from lease to ``used`` in the same transaction that writes the entry, so
  reaping never double-counts. A reservation that is never settled (a bug) is settled
  as ``abandoned`` after ``abandon_after_seconds``.
* **Idempotent.** A reservation settles once (``Reservation.settled``); ledger entries
  are unique by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..catalog import ModelSpec
from ..errors import NoSubscription, Overloaded, QuotaExceeded
from ..protocols.canonical import Request, Usage
from ..store import billing as store
from ..store import ledger
from ..store.accounts import KeyInfo
from ..store.ledger_writer import Conflict, SessionWriter, Transient, writer_for
from .clock import Clock, iso
from .limits import LocalLimiter, RedisLimiter
from .meter import Outcome, Reservation
from .plans import BillingConfig
from .pricing import MICRO, PriceBook, Rates, credits_str
from .state import AccountState, Holds, Pot, Settlement

log = logging.getLogger("stepplan.billing")

HEADER_REMAINING = "x-stepplan-credit-remaining"
NO_SUBSCRIPTION = ("you have no active step plan subscription; subscribe to a plan first "
                   "(administrator: stepplan subscribe ACCOUNT --plan flash-mini|flash-plus|flash-pro|flash-max)")


class LedgerObserver(Protocol):
    def ledger_batch(self, entries: int, seconds: float) -> None: ...

    def ledger_entry(self, entry: dict[str, Any], plan: str | None, charged: int, uncollected: int) -> None: ...


@dataclass(slots=True)
class _Pending:
    entry: dict[str, Any]
    st: Settlement
    fut: asyncio.Future[None]
    acct: AccountState | None = None


def _nn(n: int) -> int:
    return n if n > 0 else 0


def reservation_amount(rates: Rates, input_tokens: int, max_output: int, cap: int) -> int:
    """The hold for a call: input estimate × input rate + max output × output rate, capped."""
    return min(cap, max(0, input_tokens) * rates.input + max(0, max_output) * rates.output)


class CreditMeter:
    def __init__(self, settings: Any, sessions: Any, *, clock: Clock | None = None):
        self.settings = settings
        self.sessions = sessions
        self.cfg = BillingConfig.from_raw(settings.billing)
        self.prices = PriceBook(settings.catalog)
        self.clock = clock or Clock.from_env()
        self.owner = uuid.uuid4().hex
        self.limiter: LocalLimiter | RedisLimiter = (RedisLimiter(settings.redis_url, self.owner)
                                                     if settings.redis_url else LocalLimiter())
        self._accounts: dict[int, AccountState] = {}
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._inflight: dict[str, Reservation] = {}
        self._active = time.monotonic()  # the last reservation or settlement (reported by the heartbeat)
        self._busy = False  # the writer task is writing (or backing off between attempts)
        self._writer: asyncio.Task[None] | None = None
        self._maint: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False
        self._epoch = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.writer = writer_for(settings.database_url, sessions)
        self.stats = {"batches": 0, "entries": 0, "leases": 0, "returns": 0, "reaped": 0, "direct": 0,
                      "extra": 0}
        # Told about every durable ledger entry and group commit (metrics); see LedgerObserver.
        self.observer: LedgerObserver | None = None
        self._progress = time.monotonic()  # the last ledger write, or when the queue last became non-empty

    def gauges(self) -> dict[str, float]:
        """This process's state for metrics: reservations in flight, Credit leased and not yet used
        (in Credit), and ledger entries waiting for the group commit."""
        held = sum(p.leased for acct in self._accounts.values() for p in acct.pots.values() if p.leased > 0)
        return {"reservations_in_flight": len(self._inflight), "lease_credit_held": held / MICRO,
                "ledger_queue_depth": len(self._queue)}

    def writer_health(self, stall_seconds: float) -> tuple[bool, str]:
        """Whether the ledger writer (group commit) runs and its queue moves (readiness)."""
        task = self._writer
        if task is None:
            return False, "the ledger writer has not started"
        if task.done():
            exc = None if task.cancelled() else task.exception()
            return False, f"the ledger writer stopped{f': {exc!r}' if exc else ''}"
        if self._queue and time.monotonic() - self._progress > stall_seconds:
            return False, (f"{len(self._queue)} ledger entries queued and no write for "
                           f"{time.monotonic() - self._progress:.0f}s")
        return True, f"running, {len(self._queue)} queued"

    def _written(self, pending: list[_Pending], got: dict[int, int], seconds: float | None) -> None:
        """Tell the observer what was charged (final: after the extras the transaction collected)."""
        self._progress = time.monotonic()
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

    # ================================================================== life cycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with self.sessions() as s:
            await ledger.register_owner(s, self.owner, int(time.time()))
            self._epoch = await store.read_billing_epoch(s)
            await s.commit()
        await self.sweep()  # leases of processes that died before we started
        self._writer = asyncio.create_task(self._write_loop(), name="credit-writer")
        self._maint = asyncio.create_task(self._maintain_loop(), name="credit-maintenance")

    async def stop(self) -> None:
        log.info("credit meter stopping: %s", self.stats)
        self._closing = True
        self._wake.set()
        if self._maint is not None:
            self._maint.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maint
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, 30)
            except TimeoutError:
                log.error("credit writer did not drain in 30 s; %d ledger entries not written", len(self._queue))
        for acct in self._accounts.values():
            acct.dead = True  # anything settling after this goes straight to the database
        self._accounts.clear()
        self._closed = True
        await self.writer.close()
        self.writer = SessionWriter(self.sessions)  # for anything settling after shut-down
        try:
            async with self.sessions() as s:
                await ledger.release_all(s, self.owner)
                await s.commit()
        except SQLAlchemyError:
            log.exception("could not return leases at shut-down; the next sweep will")
        await self.limiter.aclose()
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)

    # ================================================================== reserve
    async def reserve(self, key: KeyInfo, spec: ModelSpec, req: Request, request_id: str,
                      input_tokens: int) -> Reservation:
        now = self.clock.now()
        try:
            acct = await self._account(key.account_id, now)
        except SQLAlchemyError as exc:
            log.exception("credit metering: database error loading account %s", key.account_id)
            raise Overloaded("credit metering is temporarily unavailable; retry shortly",
                             headers={"retry-after": "1"}) from exc
        if acct.plan is None:
            raise NoSubscription(NO_SUBSCRIPTION)
        rates = self.prices.rates(spec.id, now)
        max_out = req.max_tokens if req.max_tokens is not None else min(spec.max_output,
                                                                         self.cfg.reserve_output_tokens)
        amount = reservation_amount(rates, input_tokens, max_out, self.cfg.reserve_cap)
        plan = acct.plan
        await self.limiter.enter(acct.account_id, plan.concurrency, plan.rpm)
        try:
            holds = acct.take(amount, now, time.monotonic())
            if holds is None:
                acct, holds = await self._reserve_slow(acct, amount, now)
        except BaseException:
            self.limiter.leave(key.account_id)
            raise
        self._active = mono = time.monotonic()
        res = Reservation(request_id, key, req.model, amount, mono,
                          {"acct": acct, "holds": holds, "at": now, "spec": spec})
        self._inflight[request_id] = res
        return res

    async def _reserve_slow(self, acct: AccountState, amount: int, now: int) -> tuple[AccountState, Holds]:
        """Lease more from the database (one coroutine per account at a time), then hold."""
        try:
            for attempt in range(3):
                if acct.dead:
                    acct = await self._account(acct.account_id, now)
                async with acct.lock:
                    if acct.dead:
                        continue
                    if acct.stale:
                        await self._load(acct, now)
                    if acct.plan is None:
                        raise NoSubscription(NO_SUBSCRIPTION)
                    holds = acct.take(amount, now, time.monotonic())
                    if holds is None:
                        await self._lease(acct, amount, now)
                        holds = acct.take(amount, now, time.monotonic())
                    if holds is not None:
                        return acct, holds
                    if attempt > 0:
                        break
                    await self._load(acct, now)  # maybe a top-up or a new cycle we have not seen yet
        except SQLAlchemyError as exc:
            log.exception("credit metering: database error leasing for account %s", acct.account_id)
            raise Overloaded("credit metering is temporarily unavailable; retry shortly",
                             headers={"retry-after": "1"}) from exc
        raise self._quota_error(acct, amount, now)

    def _quota_error(self, acct: AccountState, amount: int, now: int) -> QuotaExceeded:
        for w in acct.windows:
            if w.live(now) and w.total - w.used < amount:
                label = "5-hour" if w.kind == "window_5h" else "weekly"
                return QuotaExceeded(
                    f"the plan's {label} credit limit is used up until {iso(w.expires_at)}; wait for the window "
                    "to reset, or upgrade the plan",
                    headers={"retry-after": str(max(1, w.expires_at - now))})
        left = acct.remaining(now)
        log.debug("account %s: quota exceeded for %d; pots %s", acct.account_id, amount,
                 [(p.id, p.total, p.used, p.leased, p.held) for p in acct.credit])
        return QuotaExceeded(
            f"your Step Plan credit is used up: this call needs up to {credits_str(amount)} credits and "
            f"{credits_str(left)} are left this cycle; buy a top-up pack or upgrade the plan to continue",
            headers={HEADER_REMAINING: credits_str(left)})

    async def _lease(self, acct: AccountState, amount: int, now: int) -> None:
        credit_deficit, window_deficits = acct.deficits(amount, now)
        for pot in list(acct.credit):
            if credit_deficit <= 0:
                break
            if pot.live(now):
                credit_deficit -= await self._acquire(acct, pot, credit_deficit, now)
        for w, deficit in window_deficits:
            await self._acquire(acct, w, deficit, now)

    async def _acquire(self, acct: AccountState, pot: Pot, need: int, now: int) -> int:
        """Lease ``need`` (plus slack when there is room) from one pot; returns what was leased."""
        slack = min(self.cfg.lease_max, max(self.cfg.lease_min, pot.leased))
        owner = self.owner
        async with self.sessions() as s:
            grant, row = await ledger.lease(s, owner, pot.id, need, slack, now)
            await s.commit()
        if row is not None:
            pot.total, pot.used = row.total, max(pot.used, row.used)
        if not grant:
            return 0
        self.stats["leases"] += 1
        if acct.dead or owner != self.owner:
            return 0  # reaped meanwhile: that lease is an orphan the sweep returns
        pot.leased += grant
        pot.last_active = time.monotonic()  # a fresh lease is not idle (the maintenance loop returns idle ones)
        return grant

    # ================================================================== accounts
    async def _account(self, account_id: int, now: int) -> AccountState:
        acct = self._accounts.get(account_id)
        if acct is not None and not acct.stale and not acct.dead and now < acct.valid_until:
            return acct
        if acct is None or acct.dead:
            acct = self._accounts[account_id] = AccountState(account_id, stale=True)
        async with acct.lock:
            if acct.stale or now >= acct.valid_until:
                await self._load(acct, now)
        return acct

    async def _load(self, acct: AccountState, now: int) -> None:
        sub, pots = await store.refresh_account(self.sessions, self.cfg, acct.account_id, now)
        plan = None
        if sub is not None:
            try:
                plan = self.cfg.plan(sub.plan)
            except ValueError:
                log.error("account %s is subscribed to plan %r, which is not configured", acct.account_id, sub.plan)
        horizon = sub.term_end if sub is not None else now + 5
        rows = [(p.id, p.kind, p.expires_at, p.total, p.used) for p in pots]
        acct.update(plan, sub.id if sub is not None else None, rows, now, horizon)

    # ================================================================== settle
    def settle(self, res: Reservation, outcome: Outcome) -> Awaitable[None]:
        loop = self._loop or asyncio.get_running_loop()
        if res.settled:
            prior = res.data.get("fut")
            if isinstance(prior, asyncio.Future):
                return prior
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        res.settled = True
        fut: asyncio.Future[None] = loop.create_future()
        res.data["fut"] = fut
        self._inflight.pop(res.request_id, None)
        d = res.data
        acct: AccountState = d["acct"]  # type: ignore[assignment]
        holds: Holds = d["holds"]  # type: ignore[assignment]
        started: int = d["at"]  # type: ignore[assignment]
        now = self.clock.now()
        u = outcome.usage
        rates = self.prices.rates(outcome.served.id, started)
        cost = rates.cost(u)
        d["cost"] = cost  # for the call's log record
        self._active = mono = time.monotonic()
        st = acct.settle(holds, cost, now, mono)
        self.limiter.leave(acct.account_id)
        entry = {
            "request_id": res.request_id, "owner": self.owner, "account_id": res.key.account_id,
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
            self._progress = time.monotonic()
        self._queue.append(pending)
        if self._writer is None or self._writer.done():  # shutting down: write it on its own
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
        write_now = getattr(self.writer, "write_now", None)
        if (write_now is None or self._inflight or self._queue or self._busy or p.st.direct
                or self.cfg.commit_interval > 0 or self._writer is None or self._writer.done()):
            return False
        entries, charges, converted, extras = self._batch_rows([p])
        t = time.perf_counter()
        try:
            write_now(self.owner, entries, charges, converted, int(time.time()), extras)
        except Exception:
            return False
        self.stats["batches"] += 1
        self.stats["entries"] += 1
        self._report_extras(extras)
        self._written([p], {id(x.entry): x.got for x in extras}, time.perf_counter() - t)
        p.fut.set_result(None)
        return True

    def _report_extras(self, extras: list[ledger.Extra]) -> None:
        for x in extras:
            self.stats["extra"] += 1
            if x.got < x.want:
                log.warning("request %s: cost %d exceeds the credit the account has left; %d micro-credits "
                            "uncollected", x.entry["request_id"], x.entry["cost"], x.want - x.got)

    def headers(self, res: Reservation) -> dict[str, str]:
        acct = res.data.get("acct")
        if not isinstance(acct, AccountState):
            return {}
        return {HEADER_REMAINING: credits_str(acct.remaining(self.clock.now()))}

    # ================================================================== group commit
    async def _write_loop(self) -> None:
        last, last_size = 0.0, 0
        cfg = self.cfg
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                wait = cfg.commit_interval
                if (last_size < cfg.flush_small_batch and len(self._queue) < cfg.flush_small_batch
                        and self._inflight):
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
                batch = self._queue[:self.cfg.max_batch]
                del self._queue[:self.cfg.max_batch]
                await self._flush(batch)
        finally:
            self._busy = False

    async def _flush(self, batch: list[_Pending]) -> None:
        """Write one batch durably; retries transient errors until it is written."""
        delay, bugs = 0.001, 0
        direct = [p for p in batch if p.st.direct]
        pending = [p for p in batch if not p.st.direct]
        while pending:
            entries, charges, converted, extras = self._batch_rows(pending)
            t = time.perf_counter()
            try:
                await self.writer.write(self.owner, entries, charges, converted, int(time.time()), extras)
                self.stats["batches"] += 1
                self.stats["entries"] += len(pending)
                self._report_extras(extras)
                self._written(pending, {id(x.entry): x.got for x in extras}, time.perf_counter() - t)
                break
            except ledger.LeaseLost as exc:
                log.error("lease on pot %s is gone (this process was reaped); settling directly", exc.pot_id)
                await self._on_reaped()
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

    def _batch_rows(self, pending: list[_Pending]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                            dict[int, int], list[ledger.Extra]]:
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
        async with self.sessions() as s:
            existing = await ledger.existing_requests(s, [p.entry["request_id"] for p in pending])
        if not existing:
            # A lease no longer covers its conversion: most likely this process was reaped as dead.
            log.error("ledger batch violated a constraint without a duplicate id; settling each call directly")
            await self._heartbeat()  # re-registers under a new owner if we were reaped
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
                p.entry["request_id"] = f"{rid}~{self.owner[:8]}"
                keep.append(p)
        return keep, []

    async def _write_direct(self, p: _Pending) -> None:
        """Charge without a lease (this process's leases were reclaimed): take what pots have free."""
        self.stats["direct"] += 1
        e, st = p.entry, p.st
        delay = 0.01
        for _ in range(200):
            try:
                async with self.sessions() as s:
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
                async with self.sessions() as s:
                    existing = await ledger.existing_requests(s, [e["request_id"]])
                if existing.get(e["request_id"]) == e["owner"]:
                    return
                e["request_id"] = f"{e['request_id']}~{self.owner[:8]}"
            except (SQLAlchemyError, OSError) as exc:
                log.warning("direct ledger write failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            except Exception:
                log.exception("direct ledger write failed unexpectedly")
                break
        log.error("UNWRITTEN LEDGER ENTRY %s", e)

    # ================================================================== maintenance
    async def _maintain_loop(self) -> None:
        last_beat = last_sweep = last_epoch = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            mono = time.monotonic()
            try:
                if mono - last_epoch >= self.cfg.epoch_poll_seconds:
                    last_epoch = mono
                    await self._poll_epoch()
                if mono - last_beat >= self.cfg.heartbeat_seconds:
                    last_beat = mono
                    await self._heartbeat()
                await self._return_idle(mono)
                if mono - last_sweep >= self.cfg.sweep_seconds:
                    last_sweep = mono
                    await self.sweep()
                    self._abandon(mono)
                    await self.writer.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly unavailable; try again next tick
                log.exception("credit maintenance failed")

    async def _poll_epoch(self) -> None:
        async with self.sessions() as s:
            epoch = await store.read_billing_epoch(s)
        if epoch != self._epoch:
            self._epoch = epoch
            for acct in self._accounts.values():
                acct.stale = True

    async def _heartbeat(self) -> None:
        wall, inflight = time.time(), len(self._inflight)
        idle_since = None if inflight else int(wall - (time.monotonic() - self._active))
        async with self.sessions() as s:
            alive = await ledger.heartbeat(s, self.owner, int(wall), inflight, idle_since)
            await s.commit()
        if not alive:
            log.error("this process was declared dead by another (missed heartbeats); re-registering")
            await self._on_reaped()

    async def _on_reaped(self) -> None:
        """Our leases were returned by someone else: forget them and start a new owner."""
        self.stats["reaped"] += 1
        for acct in self._accounts.values():
            acct.dead = True
        self._accounts = {}
        self.owner = uuid.uuid4().hex
        self.limiter.set_owner(self.owner)
        async with self.sessions() as s:
            await ledger.register_owner(s, self.owner, int(time.time()))
            await s.commit()

    async def _return_idle(self, mono: float) -> None:
        """Give back the unused part of leases that saw no reservation or settlement for
        ``lease_idle_seconds`` (or whose pot expired), so other processes can use it."""
        now = self.clock.now()
        for acct in list(self._accounts.values()):
            if acct.lock.locked():
                continue  # a reservation is leasing and holding right now
            if all(p.leased <= 0 and not p.held for p in acct.pots.values()) and (
                    mono - max((p.last_active for p in acct.pots.values()), default=0.0) > 60):
                self._accounts.pop(acct.account_id, None)  # idle: forget it, reload on next use
                continue
            for pot in list(acct.pots.values()):
                if pot.leased <= 0 and not pot.held:
                    if not pot.live(now):
                        acct.pots.pop(pot.id, None)
                    continue
                amount = pot.free
                if amount <= 0 or (pot.live(now) and mono - pot.last_active < self.cfg.lease_idle_seconds):
                    continue
                pot.leased -= amount
                owner = self.owner
                try:
                    async with self.sessions() as s:
                        await ledger.return_lease(s, owner, pot.id, amount, now)
                        await s.commit()
                    self.stats["returns"] += 1
                except ledger.LeaseLost:
                    await self._on_reaped()
                    return
                except BaseException:
                    pot.leased += amount
                    raise

    async def sweep(self) -> int:
        """Return the leases of dead processes to their pots; returns how many owners were reaped."""
        wall = int(time.time())
        host = ledger.host_id()
        reaped = 0
        async with self.sessions() as s:
            owners = await ledger.list_owners(s)
            orphans = await ledger.orphan_lease_owners(s)
        targets: list[tuple[str, int | None]] = []
        for o in owners:
            if o.owner != self.owner and ledger.owner_is_dead(o, wall, self.cfg.owner_ttl_seconds, host):
                same_host_dead = o.host == host and not ledger.pid_alive(o.pid, o.pid_start)
                targets.append((o.owner, None if same_host_dead else wall - int(self.cfg.owner_ttl_seconds)))
        targets += [(o, None) for o in orphans if o != self.owner]
        for owner, stale_before in targets:
            async with self.sessions() as s:
                freed = await ledger.reap(s, owner, stale_before=stale_before)
                await s.commit()
            log.warning("reclaimed %d micro-credits of leases from dead gateway process %s", freed, owner[:12])
            await self.limiter.forget_owner(owner)
            reaped += 1
        return reaped

    def _abandon(self, mono: float) -> None:
        """Settle reservations nobody settled (a bug elsewhere) so their credit is not stuck."""
        limit = self.cfg.abandon_after_seconds
        for res in [r for r in self._inflight.values() if mono - r.started > limit]:
            spec = res.data.get("spec")
            if isinstance(spec, ModelSpec):
                log.error("request %s was never settled; settling it as abandoned", res.request_id)
                self.settle(res, Outcome(served=spec, usage=Usage(), status="abandoned"))


__all__ = ["HEADER_REMAINING", "CreditMeter", "reservation_amount"]

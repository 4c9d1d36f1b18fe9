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

The work is split by job, each in its own module, sharing one :class:`~.core.MeterCore`:

==========================  ==================================================================
:mod:`.leasing`             ``reserve``, the account cache, leases from the database
:mod:`.settlement`          ``settle``, the inline write, group commit, extras, direct writes
:mod:`.maintenance`         the background loop: epoch poll, heartbeat, idle-lease return,
                            sweep of dead processes, abandoned reservations, checkpoints
:mod:`.core`                the shared state and this process's lease-owner identity
this module                 :class:`CreditMeter`: wires the jobs together, start and stop
==========================  ==================================================================
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..store import ledger, meta
from ..store.ledger_writer import writer_for
from .clock import Clock
from .core import MeterCore
from .leasing import HEADER_REMAINING, Leasing, reservation_amount
from .limits import LocalLimiter, RedisLimiter
from .maintenance import Maintenance
from .plans import BillingConfig
from .pricing import MICRO, PriceBook
from .settlement import LedgerObserver, Settler

log = logging.getLogger("stepplan.billing")


class CreditMeter:
    """The :class:`~stepplan.billing.meter.Meter` with credit: ``reserve``, ``settle`` and
    ``headers`` are the jobs' own methods (bound here, so a call costs no extra hop), and
    ``start``/``stop`` run the life cycle."""

    def __init__(self, settings: Any, sessions: Any, *, clock: Clock | None = None):
        self.settings = settings
        cfg = BillingConfig.from_raw(settings.billing)
        prices = PriceBook(settings.catalog)
        self.clock = clock or Clock.from_env()
        owner = uuid.uuid4().hex
        limiter: LocalLimiter | RedisLimiter = (RedisLimiter(settings.redis_url, owner, self.clock)
                                                if settings.redis_url else LocalLimiter(self.clock))
        self.core = core = MeterCore(cfg, prices, self.clock, sessions, limiter, owner)
        self.leasing = Leasing(core)
        self.settler = Settler(core, writer_for(settings.database_url, sessions))
        self.maintenance = Maintenance(core, self.settler)
        self.stats = core.stats
        self.reserve = self.leasing.reserve
        self.settle = self.settler.settle
        self.headers = self.leasing.headers

    @property
    def observer(self) -> LedgerObserver | None:
        """Told about every durable ledger entry and group commit (metrics)."""
        return self.settler.observer

    @observer.setter
    def observer(self, value: LedgerObserver | None) -> None:
        self.settler.observer = value

    def gauges(self) -> dict[str, float]:
        """This process's state for metrics: reservations in flight, Credit leased and not yet used
        (in Credit), and ledger entries waiting for the group commit."""
        core = self.core
        held = sum(p.leased for acct in core.accounts.values() for p in acct.pots.values() if p.leased > 0)
        return {"reservations_in_flight": len(core.inflight), "lease_credit_held": held / MICRO,
                "ledger_queue_depth": self.settler.queued}

    def writer_health(self, stall_seconds: float) -> tuple[bool, str]:
        """Whether the ledger writer (group commit) runs and its queue moves (readiness)."""
        return self.settler.health(stall_seconds)

    @property
    def owner(self) -> str:
        """This process's lease-owner id (a new one after it was reaped)."""
        return self.core.owner

    async def start(self) -> None:
        core = self.core
        core.loop = asyncio.get_running_loop()
        async with core.sessions() as s:
            await ledger.register_owner(s, core.owner, int(time.time()))
            self.maintenance.epoch = await meta.read_billing_epoch(s)
            await s.commit()
        await self.maintenance.sweep()  # leases of processes that died before we started
        self.settler.start()
        self.maintenance.start()

    async def stop(self) -> None:
        core = self.core
        log.info("credit meter stopping: %s", core.stats)
        self.settler.begin_close()
        await self.maintenance.stop()
        await self.settler.drain(30)
        for acct in core.accounts.values():
            acct.dead = True  # anything settling after this goes straight to the database
        core.accounts.clear()
        await self.settler.close()
        try:
            async with core.sessions() as s:
                await ledger.release_all(s, core.owner)
                await s.commit()
        except SQLAlchemyError:
            log.exception("could not return leases at shut-down; the next sweep will")
        await core.limiter.aclose()
        await self.settler.wait_late()


__all__ = ["HEADER_REMAINING", "CreditMeter", "reservation_amount"]

"""Maintenance: the credit meter's background loop.

Every 0.1 s it returns the unused part of idle leases (and forgets idle accounts); on their own
periods it polls the billing epoch (an administrator changed an account: reload it), heartbeats
(:meth:`MeterCore.heartbeat`), reaps the leases of dead processes (:meth:`Maintenance.sweep`:
their pid is gone on this host, or their heartbeat is older than the TTL), settles reservations
nobody settled (a bug elsewhere) as ``abandoned``, and checkpoints the SQLite ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..protocols.canonical import Usage
from ..store import ledger, meta
from .core import MeterCore
from .meter import Outcome
from .settlement import Settler

log = logging.getLogger("stepplan.billing")


class Maintenance:
    def __init__(self, core: MeterCore, settler: Settler):
        self.core = core
        self.settler = settler
        self.epoch = ""  # the billing epoch the account cache is as new as
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="credit-maintenance")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        core = self.core
        cfg = core.cfg
        last_beat = last_sweep = last_epoch = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            mono = time.monotonic()
            try:
                if mono - last_epoch >= cfg.epoch_poll_seconds:
                    last_epoch = mono
                    await self.poll_epoch()
                if mono - last_beat >= cfg.heartbeat_seconds:
                    last_beat = mono
                    await core.heartbeat()
                await self.return_idle(mono)
                if mono - last_sweep >= cfg.sweep_seconds:
                    last_sweep = mono
                    await self.sweep()
                    self.abandon(mono)
                    await self.settler.writer.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly unavailable; try again next tick
                log.exception("credit maintenance failed")

    async def poll_epoch(self) -> None:
        async with self.core.sessions() as s:
            epoch = await meta.read_billing_epoch(s)
        if epoch != self.epoch:
            self.epoch = epoch
            for acct in self.core.accounts.values():
                acct.stale = True

    async def return_idle(self, mono: float) -> None:
        """Give back the unused part of leases that saw no reservation or settlement for
        ``lease_idle_seconds`` (or whose pot expired), so other processes can use it."""
        core = self.core
        now = core.clock.now()
        for acct in list(core.accounts.values()):
            if acct.lock.locked():
                continue  # a reservation is leasing and holding right now
            if all(p.leased <= 0 and not p.held for p in acct.pots.values()) and (
                    mono - max((p.last_active for p in acct.pots.values()), default=0.0) > 60):
                core.accounts.pop(acct.account_id, None)  # idle: forget it, reload on next use
                continue
            for pot in list(acct.pots.values()):
                if pot.leased <= 0 and not pot.held:
                    if not pot.live(now):
                        acct.pots.pop(pot.id, None)
                    continue
                amount = pot.free
                if amount <= 0 or (pot.live(now) and mono - pot.last_active < core.cfg.lease_idle_seconds):
                    continue
                pot.leased -= amount
                owner = core.owner
                try:
                    async with core.sessions() as s:
                        await ledger.return_lease(s, owner, pot.id, amount, now)
                        await s.commit()
                    core.stats["returns"] += 1
                except ledger.LeaseLost:
                    await core.renew()
                    return
                except BaseException:
                    pot.leased += amount
                    raise

    async def sweep(self) -> int:
        """Return the leases of dead processes to their pots; returns how many owners were reaped."""
        core = self.core
        ttl = core.cfg.owner_ttl_seconds
        wall = int(time.time())
        host = ledger.host_id()
        reaped = 0
        async with core.sessions() as s:
            owners = await ledger.list_owners(s)
            orphans = await ledger.orphan_lease_owners(s)
        targets: list[tuple[str, int | None]] = []
        for o in owners:
            if o.owner != core.owner and ledger.owner_is_dead(o, wall, ttl, host):
                same_host_dead = o.host == host and not ledger.pid_alive(o.pid, o.pid_start)
                targets.append((o.owner, None if same_host_dead else wall - int(ttl)))
        targets += [(o, None) for o in orphans if o != core.owner]
        for owner, stale_before in targets:
            async with core.sessions() as s:
                freed = await ledger.reap(s, owner, stale_before=stale_before)
                await s.commit()
            log.warning("reclaimed %d micro-credits of leases from dead gateway process %s", freed, owner[:12])
            await core.limiter.forget_owner(owner)
            reaped += 1
        return reaped

    def abandon(self, mono: float) -> None:
        """Settle reservations nobody settled (a bug elsewhere) so their credit is not stuck."""
        limit = self.core.cfg.abandon_after_seconds
        for res in [r for r in self.core.inflight.values() if mono - r.started > limit]:
            if res.hold is not None:
                log.error("request %s was never settled; settling it as abandoned", res.request_id)
                self.settler.settle(res, Outcome(served=res.hold.spec, usage=Usage(), status="abandoned"))

"""What the credit meter's jobs share: one :class:`MeterCore` per meter.

:mod:`~stepplan.billing.leasing` (reserve, lease), :mod:`~stepplan.billing.settlement`
(settle, group commit, direct writes) and :mod:`~stepplan.billing.maintenance` (the
background loop) each get the same core and keep everything else to themselves. The core
also owns this process's identity as a lease owner: its ``meter_owners`` row, the heartbeat
that keeps the row fresh, and :meth:`MeterCore.renew` when another process reaped it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..store import ledger
from .clock import Clock
from .limits import LocalLimiter, RedisLimiter
from .meter import Reservation
from .plans import BillingConfig
from .pricing import PriceBook
from .state import AccountState

log = logging.getLogger("stepplan.billing")


def _stats() -> dict[str, int]:
    return {"batches": 0, "entries": 0, "leases": 0, "returns": 0, "reaped": 0, "direct": 0, "extra": 0}


@dataclass(slots=True, eq=False)
class MeterCore:
    cfg: BillingConfig
    prices: PriceBook
    clock: Clock
    sessions: Any  # async_sessionmaker
    limiter: LocalLimiter | RedisLimiter
    owner: str  # this process's lease-owner id; a new one after being reaped
    accounts: dict[int, AccountState] = field(default_factory=dict)  # the account cache, by account id
    inflight: dict[str, Reservation] = field(default_factory=dict)  # reserved, not yet settled, by request id
    active: float = field(default_factory=time.monotonic)  # the last reservation or settlement (for the heartbeat)
    loop: asyncio.AbstractEventLoop | None = None  # set by start
    stats: dict[str, int] = field(default_factory=_stats)

    async def heartbeat(self) -> None:
        """Tell other processes this one is alive, and how busy (calls in flight, idle since);
        re-register if one of them already declared it dead."""
        wall, inflight = time.time(), len(self.inflight)
        idle_since = None if inflight else int(wall - (time.monotonic() - self.active))
        async with self.sessions() as s:
            alive = await ledger.heartbeat(s, self.owner, int(wall), inflight, idle_since)
            await s.commit()
        if not alive:
            log.error("this process was declared dead by another (missed heartbeats); re-registering")
            await self.renew()

    async def renew(self) -> None:
        """Our leases were returned by someone else: forget them and start a new owner."""
        self.stats["reaped"] += 1
        for acct in self.accounts.values():
            acct.dead = True
        self.accounts = {}
        self.owner = uuid.uuid4().hex
        self.limiter.set_owner(self.owner)
        async with self.sessions() as s:
            await ledger.register_owner(s, self.owner, int(time.time()))
            await s.commit()

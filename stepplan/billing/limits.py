"""Per-account rate limits from the plan: calls in flight (concurrency) and calls per minute.
The same counters hold a key's own limits (``--rpm``/``--concurrency`` on the key), under the
id ``k<key id>`` instead of the account id; a call must pass both.

The plan's "priority rate" (spec §5.1: Flash Plus and above) is a larger allowance.
Without Redis each process enforces the limits on its own traffic. With Redis
(``STEPPLAN_REDIS_URL``) the counters are shared by every replica:

* concurrency: a hash per account, one field per gateway process (``owner``), summed by
  a Lua script that admits a call only if the total stays within the limit; a dead
  process's field is deleted when its leases are reaped, so a crash leaks nothing;
* calls per minute: a counter per account per minute of the billing :class:`~.clock.Clock`
  (the wall clock in production; every process of a deployment must run with the same
  clock, as they do unless a test shifts it), expiring after 2 minutes.

A rejected call does not count. The database remains the source of truth for credit;
Redis only holds these short-lived counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..errors import RateLimited
from .clock import Clock

log = logging.getLogger("stepplan.billing")

CONC_KEY = "stepplan:conc:{}"
RPM_KEY = "stepplan:rpm:{}:{}"

_ENTER = """
local conc_key, rpm_key = KEYS[1], KEYS[2]
local owner, conc_limit, rpm_limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm_limit > 0 then
  local n = tonumber(redis.call('GET', rpm_key) or '0')
  if n >= rpm_limit then return 2 end
end
if conc_limit > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', conc_key)) do total = total + tonumber(v) end
  if total >= conc_limit then return 1 end
end
redis.call('HINCRBY', conc_key, owner, 1)
if rpm_limit > 0 then
  redis.call('INCR', rpm_key)
  redis.call('EXPIRE', rpm_key, 120)
end
return 0
"""


def _too_many(reason: int, concurrency: int, rpm: int, now: int, scope: str = "account") -> RateLimited:
    if scope == "key":
        if reason == 1:
            return RateLimited(f"too many calls in flight for this API key (the key's own limit: {concurrency}); "
                               "retry when one finishes", headers={"retry-after": "1"})
        return RateLimited(f"too many calls this minute for this API key (the key's own limit: {rpm} per "
                           "minute); retry shortly", headers={"retry-after": str(max(1, 60 - now % 60))})
    if reason == 1:
        return RateLimited(f"too many calls in flight for this account (plan limit {concurrency}); "
                           "retry when one finishes, or upgrade the plan for a higher priority rate",
                           headers={"retry-after": "1"})
    wait = 60 - now % 60  # until the next minute of the clock that counted this one
    return RateLimited(f"too many calls this minute for this account (plan limit {rpm} per minute); "
                       "retry shortly, or upgrade the plan for a higher priority rate",
                       headers={"retry-after": str(max(1, wait))})


class LocalLimiter:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock.from_env()
        self.inflight: dict[int | str, int] = {}
        self.minute: dict[int | str, tuple[int, int]] = {}

    async def enter(self, account_id: int | str, concurrency: int, rpm: int, scope: str = "account") -> None:
        """Admit a call of ``account_id`` (an account id, or ``k<id>`` for a key's own limits)."""
        now = self.clock.now()
        m = now // 60
        n = 0
        if rpm > 0:
            cur_m, n = self.minute.get(account_id, (m, 0))
            if cur_m != m:
                n = 0
            if n >= rpm:
                raise _too_many(2, concurrency, rpm, now, scope)
        if concurrency > 0 and self.inflight.get(account_id, 0) >= concurrency:
            raise _too_many(1, concurrency, rpm, now, scope)
        if rpm > 0:
            self.minute[account_id] = (m, n + 1)
        self.inflight[account_id] = self.inflight.get(account_id, 0) + 1

    def leave(self, account_id: int | str) -> None:
        n = self.inflight.get(account_id, 0) - 1
        if n > 0:
            self.inflight[account_id] = n
        else:
            self.inflight.pop(account_id, None)

    def set_owner(self, owner: str) -> None:
        return None

    async def forget_owner(self, owner: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisLimiter:
    def __init__(self, url: str, owner: str, clock: Clock | None = None):
        import redis.asyncio as aioredis

        self.clock = clock or Clock.from_env()
        self.redis: Any = aioredis.from_url(url)
        self.owner = owner
        self._enter = self.redis.register_script(_ENTER)
        self._pending: dict[int | str, int] = {}  # account (or k<key id>) → releases not yet sent
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def enter(self, account_id: int | str, concurrency: int, rpm: int, scope: str = "account") -> None:
        if concurrency <= 0 and rpm <= 0:
            return
        now = self.clock.now()
        reason = await self._enter(keys=[CONC_KEY.format(account_id), RPM_KEY.format(account_id, now // 60)],
                                   args=[self.owner, concurrency, rpm])
        if int(reason):
            raise _too_many(int(reason), concurrency, rpm, now, scope)

    def leave(self, account_id: int | str) -> None:
        """Synchronous: releases are batched and sent by a background flusher."""
        self._pending[account_id] = self._pending.get(account_id, 0) + 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        self._wake.set()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                pipe = self.redis.pipeline(transaction=False)
                for account_id, n in batch.items():
                    pipe.hincrby(CONC_KEY.format(account_id), self.owner, -n)
                await pipe.execute()
            except Exception:  # Redis down: keep the releases and try again
                log.exception("redis: could not release concurrency slots; retrying")
                for k, v in batch.items():
                    self._pending[k] = self._pending.get(k, 0) + v
                await asyncio.sleep(0.5)

    def set_owner(self, owner: str) -> None:
        self.owner = owner

    async def forget_owner(self, owner: str) -> None:
        """Drop a dead process's concurrency counts."""
        async for key in self.redis.scan_iter(match=CONC_KEY.format("*"), count=500):
            await self.redis.hdel(key, owner)

    async def aclose(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flusher, 5)
        with contextlib.suppress(Exception):
            await self.forget_owner(self.owner)
        await self.redis.aclose()

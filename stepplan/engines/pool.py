"""Upstream pools: several members (keys and/or endpoints) behind one upstream name.

Selection is weighted least-in-flight among the members that are available now (healthy, under
their ``max_concurrency`` and ``rpm``): the lowest ``in_flight / weight`` wins, ties broken by a
random pick weighted by ``weight`` (see docs/decisions.md). A conversation key (the request's
session id) keeps its member while that member is available (prompt-cache affinity).

Health, per process: a member that fails (429, 5xx, connect error, timeout) is cooled down —
``Retry-After`` when the upstream sent one, else exponential backoff — and taken out of rotation
until then. After ``breaker_failures`` consecutive failures its breaker opens; when the cooldown
has passed it is half-open and lets exactly one probe through: success closes it, failure opens
it again with a longer cooldown. A 401/403 means the upstream refused the member's key: its breaker
opens at once for ``cooldown_max`` (:meth:`Member.rejected`). Any other 4xx is the request's fault,
never the member's.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from ..settings import MemberConfig, UpstreamConfig
from .proxy_url import proxy_where

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Member:
    __slots__ = ("breaker_failures", "cfg", "cooldown_max", "cooldown_until", "credentials_rejected", "failures",
                 "in_flight", "name", "probing", "sent", "state", "total_failures", "upstream")

    def __init__(self, upstream: str, cfg: MemberConfig, breaker_failures: int, cooldown_max: float) -> None:
        self.upstream = upstream
        self.cfg = cfg
        self.name = cfg.name
        self.breaker_failures = breaker_failures
        self.cooldown_max = cooldown_max
        self.in_flight = 0
        self.failures = 0  # consecutive
        self.total_failures = 0
        self.cooldown_until = 0.0  # time.monotonic()
        self.state = CLOSED
        self.probing = False
        self.credentials_rejected = False  # its last answer was 401/403 (a misconfiguration)
        self.sent: deque[float] = deque()  # send times within the last minute (for rpm)

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def available(self, now: float) -> bool:
        if now < self.cooldown_until:
            return False
        if self.state == OPEN:
            self.state = HALF_OPEN  # the cooldown has passed: one probe may go through
        if self.state == HALF_OPEN and self.probing:
            return False
        cap = self.cfg.max_concurrency
        if cap is not None and self.in_flight >= cap:
            return False
        rpm = self.cfg.rpm
        if rpm is not None:
            while self.sent and self.sent[0] <= now - 60.0:
                self.sent.popleft()
            if len(self.sent) >= rpm:
                return False
        return True

    def acquire(self, now: float) -> None:
        self.in_flight += 1
        if self.cfg.rpm is not None:
            self.sent.append(now)
        if self.state == HALF_OPEN:
            self.probing = True

    def release(self) -> None:
        self.in_flight -= 1

    def succeeded(self) -> None:
        self.failures = 0
        self.credentials_rejected = False
        self.state = CLOSED
        self.probing = False
        self.cooldown_until = 0.0

    def failed(self, delay: float, now: float) -> None:
        """Cool down for ``delay`` seconds (the caller's backoff or the upstream's Retry-After)."""
        self.failures += 1
        self.total_failures += 1
        self.probing = False
        if self.state == HALF_OPEN or self.failures >= self.breaker_failures:
            self.state = OPEN
        self.cooldown_until = max(self.cooldown_until, now + min(delay, self.cooldown_max))

    def rejected(self, now: float) -> None:
        """The upstream refused this member's credentials (401/403): a misconfiguration, not load.
        Its breaker opens at once and it stays out for ``cooldown_max``; then one probe at a time
        tests it (a fixed key comes back by itself; a still-wrong one goes out again)."""
        self.failures = max(self.failures + 1, self.breaker_failures)
        self.total_failures += 1
        self.probing = False
        self.state = OPEN
        self.credentials_rejected = True
        self.cooldown_until = max(self.cooldown_until, now + self.cooldown_max)

    def view(self, now: float) -> dict[str, Any]:
        state = self.state
        if state == OPEN and now >= self.cooldown_until:
            state = HALF_OPEN
        cooling = self.cooldown_until > now
        return {"name": self.name, "base_url": self.cfg.base_url, "weight": self.weight, "state": state,
                "available": not cooling and not (state == HALF_OPEN and self.probing),
                "in_flight": self.in_flight, "consecutive_failures": self.failures,
                "failures": self.total_failures, "credentials_rejected": self.credentials_rejected,
                "cooldown_until": (time.time() + self.cooldown_until - now) if cooling else None,
                "max_concurrency": self.cfg.max_concurrency, "rpm": self.cfg.rpm, "proxy": proxy_where(self.cfg.proxy)}


class Affinity:
    """Bounded map with TTL: conversation key → member name."""

    def __init__(self, ttl: float, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def get(self, key: str, now: float) -> str | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._items[key]
            return None
        return hit[1]

    def put(self, key: str, member: str, now: float) -> None:
        self._items[key] = (now + self.ttl, member)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Pool:
    def __init__(self, cfg: UpstreamConfig, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.name = cfg.name
        self.clock = clock
        self.rng = rng or random.Random()
        self.members = [Member(cfg.name, m, cfg.breaker_failures, cfg.cooldown_max) for m in cfg.pool_members()]
        self.by_name = {m.name: m for m in self.members}
        self.affinity = Affinity(cfg.affinity_seconds)

    def pick(self, session: str | None = None, exclude: Iterable[Member] = ()) -> Member | None:
        """The member for the next send, or None when none is available now."""
        now = self.clock()
        excluded = set(map(id, exclude)) if exclude else ()
        if session is not None:
            name = self.affinity.get(session, now)
            m = self.by_name.get(name) if name is not None else None
            if m is not None and id(m) not in excluded and m.available(now):
                return m
        best: list[Member] = []
        load = 0.0
        for m in self.members:
            if id(m) in excluded or not m.available(now):
                continue
            x = m.in_flight / m.weight
            if not best or x < load:
                best, load = [m], x
            elif x == load:
                best.append(m)
        if not best:
            return None
        chosen = best[0] if len(best) == 1 else self.rng.choices(best, [m.weight for m in best])[0]
        if session is not None:
            self.affinity.put(session, chosen.name, now)
        return chosen

    def soonest(self, exclude: Iterable[Member] = ()) -> Member | None:
        """The member whose cooldown ends first (to wait for when none is available)."""
        excluded = set(map(id, exclude))
        left = [m for m in self.members if id(m) not in excluded]
        return min(left, key=lambda m: m.cooldown_until) if left else None

    def view(self) -> dict[str, Any]:
        now = self.clock()
        return {"name": self.name, "members": [m.view(now) for m in self.members]}

"""Billing time: whole unix seconds, injectable for tests, and calendar-month arithmetic.

Every billing decision (which cycle is current, whether a pack has expired, which price
window applies, which minute a per-minute rate limit counts in) asks a :class:`Clock`
instead of ``time.time()``. Production uses the wall clock. Two variables, for tests
only, move it; both are read once, when the meter or a CLI command starts:

* ``STEPPLAN_CLOCK_OFFSET=<seconds>``: the wall clock plus this many seconds, so a test
  can run the real server "31 days later" without sleeping. Processes given the same
  offset agree to the second.
* ``STEPPLAN_CLOCK_AT=<ISO 8601 instant>`` (e.g. ``2028-02-29T12:00:00Z``; no zone means
  UTC, a bare date means its midnight): the clock reads this instant when the variable is
  read, then advances in real time. Each process computes its own offset when it starts,
  so processes started apart differ by that gap; give several processes the same
  ``STEPPLAN_CLOCK_OFFSET`` when they must agree.

Setting both is an error.
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

CLOCK_OFFSET_ENV = "STEPPLAN_CLOCK_OFFSET"
CLOCK_AT_ENV = "STEPPLAN_CLOCK_AT"
HOUR = 3600
DAY = 86_400
WEEK = 7 * DAY
FIVE_HOURS = 5 * HOUR


@dataclass(frozen=True, slots=True)
class Clock:
    offset: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Clock:
        """The clock the environment asks for (see the module docstring); the wall clock by default."""
        env = os.environ if env is None else env
        raw = env.get(CLOCK_OFFSET_ENV, "").strip()
        at = env.get(CLOCK_AT_ENV, "").strip()
        if raw and at:
            raise ValueError(f"set {CLOCK_OFFSET_ENV} or {CLOCK_AT_ENV}, not both")
        if at:
            return cls(parse_instant(at, CLOCK_AT_ENV) - int(time.time()))
        if not raw:
            return cls()
        try:
            return cls(int(raw))
        except ValueError as exc:
            raise ValueError(f"{CLOCK_OFFSET_ENV} must be an integer number of seconds, not {raw!r}") from exc

    def now(self) -> int:
        return int(time.time()) + self.offset


def parse_instant(raw: str, name: str = "time") -> int:
    """Unix seconds of an ISO 8601 date or date-time; no zone means UTC, a bare date its midnight."""
    try:
        d = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 date or date-time such as 2028-02-29T12:00:00Z, "
                         f"not {raw!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp())


def add_months(ts: int, months: int) -> int:
    """``ts`` moved by whole calendar months (UTC); the day is clamped to the month's end.

    Jan 31 + 1 month = Feb 28/29, keeping the time of day. Cycle ``k`` of a subscription
    always starts at ``add_months(term_start, k)`` (computed from the start, never chained),
    so clamping never accumulates drift.
    """
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    total = d.year * 12 + (d.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


def cycle_index(term_start: int, now: int) -> int:
    """Which monthly cycle of a term contains ``now`` (0 = the first month)."""
    if now < term_start:
        return 0
    d0 = dt.datetime.fromtimestamp(term_start, dt.UTC)
    d1 = dt.datetime.fromtimestamp(now, dt.UTC)
    k = (d1.year - d0.year) * 12 + (d1.month - d0.month)
    k = max(0, k)
    while k > 0 and add_months(term_start, k) > now:
        k -= 1
    while add_months(term_start, k + 1) <= now:
        k += 1
    return k


def iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

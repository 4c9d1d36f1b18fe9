"""The tests' billing clock: run the tests as if it were another date.

``STEPPLAN_TEST_DATE=YYYY-MM-DD[THH:MM:SS]`` (UTC; a bare date means its midnight) pins the
billing clock at that instant when the test session starts; from there it advances in real
time. It applies to every gateway and CLI command the tests start (passed as
``STEPPLAN_CLOCK_OFFSET``, computed once per session so that all processes agree to the
second), to the in-process meters (:func:`clock`) and to the tests' own expected values
(:func:`now`). Without the variable the tests use the real clock.

``bash scripts/test.sh`` reruns the ``calendar`` tests at each of :data:`CALENDAR_DATES`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
import time

from stepplan.billing.clock import Clock

TEST_DATE_ENV = "STEPPLAN_TEST_DATE"

# The dates scripts/test.sh reruns the calendar tests at: a 30-day month, a 31-day month (the
# date CI first failed on), February, a leap day, and the last days of two months (the second
# 30 s before midnight, so the run crosses into April).
CALENDAR_DATES = ("2026-04-15", "2026-12-05", "2026-02-14", "2028-02-29", "2026-01-31", "2026-03-31T23:59:30")


def _start(raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        d = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{TEST_DATE_ENV} must look like 2028-02-29 or 2028-02-29T23:59:30, not {raw!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp())


START: int | None = _start(os.environ.get(TEST_DATE_ENV, ""))
OFFSET: int = 0 if START is None else START - int(time.time())


def now() -> int:
    """The billing clock's reading now, as the gateways the tests start see it."""
    return int(time.time()) + OFFSET


def clock(shift: int = 0) -> Clock:
    """The tests' clock (``shift`` seconds ahead) for a meter or limiter inside the test process."""
    return Clock(OFFSET + shift)


def gateway_env(shift: int | None = None) -> dict[str, str]:
    """Environment for a gateway or CLI command on the tests' clock, or ``shift`` seconds ahead of it
    (empty when neither a test date nor a shift asks for an injected clock)."""
    if START is None and shift is None:
        return {}
    return {"STEPPLAN_CLOCK_OFFSET": str(OFFSET + (shift or 0))}


def one_month_later(t: int) -> int:
    """Unix seconds ``t`` plus one calendar month (UTC), the day clamped to the month's end
    (Jan 31 → Feb 28/29): how a monthly pool's expiry is expected, computed without stepplan."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(d.replace(year=year, month=month, day=min(d.day, calendar.monthrange(year, month)[1])).timestamp())

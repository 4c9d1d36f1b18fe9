"""Exact integer pricing: model prices → per-token rates → the cost of a call.

Units. 1 Credit = ¥0.000001 (1M Credit = ¥1, spec §5.1). The ledger counts
**micro-credits** (1 Credit = 1,000,000 micro-credits, so ¥1 = 10^12 micro-credits).
A price of ¥P per 1M tokens is P Credit per token = P × 10^6 micro-credits per token,
which is an exact integer for every price with at most 6 decimal places (the catalog's
prices have two). Prices with more decimals are rejected at start-up, never rounded.

Cost of a call, in micro-credits, with no rounding at all::

    uncached_input × rate_input + cache_read × rate_cache
      + cache_write × rate_input + output × rate_output

``output`` includes reasoning tokens; cache-write tokens (Anthropic-style upstreams)
are priced as ordinary input. Because every rate is an integer number of
micro-credits per token, the cost is exact; the only rounding anywhere in billing is
in *display* (credits shown to people are micro-credits floored to whole credits).

Time-of-day windows (``ModelSpec.price_windows``) replace some or all of a model's
prices while the call's start time falls inside them. Each window is a table::

    {days = ["mon","tue","wed","thu","fri"], start = "09:00", end = "12:00",
     tz = "Asia/Shanghai", price_input = "9.0", price_cache = "0.30", price_output = "27.0"}

``days`` defaults to every day, ``tz`` to Asia/Shanghai (Beijing time, as DeepSeek's
peak hours are published), ``end`` is exclusive and may be ``"24:00"``; a price left
out keeps the model's base price. The first matching window wins.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..catalog import Catalog, ModelSpec
from ..protocols.canonical import Usage

MICRO = 1_000_000  # micro-credits per credit
LEDGER_MAX = 2**63 - 1  # the ledger's integer columns are 64-bit
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def rate_from_price(price: str, what: str = "price") -> int:
    """CNY per 1M tokens (exact decimal string) → micro-credits per token."""
    try:
        d = Decimal(str(price).strip())
    except InvalidOperation as exc:
        raise ValueError(f"{what} {price!r} is not a decimal number") from exc
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} {price!r} must be a non-negative number")
    scaled = d * MICRO
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what} {price!r} has more than 6 decimal places; billing is exact and will not round it")
    return int(scaled)


def credits_str(micro: int) -> str:
    """Whole credits for display, rounded down (never shows credit that is not there)."""
    return str(micro // MICRO)


@dataclass(frozen=True, slots=True)
class Rates:
    """Micro-credits per token."""

    input: int
    cache: int
    output: int

    def cost(self, u: Usage) -> int:
        """Exact micro-credits; a negative count (a broken upstream) counts as zero."""
        i, r, w, o = u.input, u.cache_read, u.cache_write, u.output
        return ((i if i > 0 else 0) * self.input + (r if r > 0 else 0) * self.cache
                + (w if w > 0 else 0) * self.input + (o if o > 0 else 0) * self.output)


@dataclass(frozen=True, slots=True)
class _Window:
    days: frozenset[int]
    start: int  # minutes after midnight
    end: int
    tz: dt.tzinfo
    rates: Rates

    def contains(self, ts: int) -> bool:
        local = dt.datetime.fromtimestamp(ts, self.tz)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end


def _minutes(value: Any, where: str) -> int:
    try:
        hh, mm = str(value).split(":")
        m = int(hh) * 60 + int(mm)
    except ValueError as exc:
        raise ValueError(f"{where}: time {value!r} must look like HH:MM") from exc
    if not 0 <= m <= 24 * 60:
        raise ValueError(f"{where}: time {value!r} is outside 00:00-24:00")
    return m


def _days(value: Any, where: str) -> frozenset[int]:
    if value is None:
        return frozenset(range(7))
    out: set[int] = set()
    for d in value:
        if isinstance(d, int) and 0 <= d <= 6:
            out.add(d)
        elif isinstance(d, str) and d.lower()[:3] in DAYS:
            out.add(DAYS.index(d.lower()[:3]))
        else:
            raise ValueError(f"{where}: day {d!r} must be 0-6 (Monday = 0) or one of {', '.join(DAYS)}")
    return frozenset(out)


class PriceBook:
    """Rates for every model in the catalog, validated once at start-up."""

    KNOWN_WINDOW_KEYS = frozenset({"days", "start", "end", "tz", "price_input", "price_cache", "price_output"})

    def __init__(self, catalog: Catalog):
        self.base: dict[str, Rates] = {}
        self.windows: dict[str, tuple[_Window, ...]] = {}
        for spec in catalog.models.values():
            self.base[spec.id] = self._rates(spec.price_input, spec.price_cache, spec.price_output, f"models.{spec.id}")
            self.windows[spec.id] = tuple(self._window(spec, i, w) for i, w in enumerate(spec.price_windows))
        # Per model, the highest of each rate over its base price and windows: the bound billable() checks.
        self.highest: dict[str, Rates] = {}
        for model_id, base in self.base.items():
            all_rates = [base, *(w.rates for w in self.windows[model_id])]
            self.highest[model_id] = Rates(max(r.input for r in all_rates), max(r.cache for r in all_rates),
                                           max(r.output for r in all_rates))

    @staticmethod
    def _rates(p_in: Any, p_cache: Any, p_out: Any, where: str) -> Rates:
        return Rates(rate_from_price(p_in, f"{where}.price_input"), rate_from_price(p_cache, f"{where}.price_cache"),
                     rate_from_price(p_out, f"{where}.price_output"))

    def _window(self, spec: ModelSpec, i: int, raw: dict[str, Any]) -> _Window:
        where = f"models.{spec.id}.price_windows[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(raw) - self.KNOWN_WINDOW_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            tz = ZoneInfo(str(raw.get("tz", "Asia/Shanghai")))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{where}: unknown time zone {raw.get('tz')!r}") from exc
        start = _minutes(raw.get("start", "00:00"), where)
        end = _minutes(raw.get("end", "24:00"), where)
        if end <= start:
            raise ValueError(f"{where}: end must be after start")
        rates = self._rates(raw.get("price_input", spec.price_input), raw.get("price_cache", spec.price_cache),
                            raw.get("price_output", spec.price_output), where)
        return _Window(_days(raw.get("days"), where), start, end, tz, rates)

    def billable(self, model_id: str, u: Usage) -> bool:
        """Whether ``u``'s cost fits the ledger's 64-bit integer columns at the model's highest rates
        (an upstream reporting 10^15 tokens is a defect to count locally, not a bill to write).
        One multiplication per count: the bound is computed once, at start-up."""
        highest = self.highest.get(model_id)
        worst = highest.cost(u) if highest is not None else 0
        return worst <= LEDGER_MAX and max(u.input, u.cache_read, u.cache_write, u.output, u.reasoning) <= LEDGER_MAX

    def rates(self, model_id: str, at: int) -> Rates:
        """The rates in force for ``model_id`` at unix time ``at`` (the call's start)."""
        for w in self.windows.get(model_id, ()):
            if w.contains(at):
                return w.rates
        return self.base[model_id]

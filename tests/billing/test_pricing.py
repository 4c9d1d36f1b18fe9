"""Unit tests of the pure parts: integer rates, price windows, calendar cycles, plan config,
reservation sizes, and the in-memory hold/charge arithmetic."""

from __future__ import annotations

import datetime as dt

import pytest

from stepplan.billing.clock import Clock, add_months, cycle_index
from stepplan.billing.credit_meter import reservation_amount
from stepplan.billing.plans import BillingConfig, fen, yuan
from stepplan.billing.pricing import PriceBook, Rates, credits_str, rate_from_price
from stepplan.billing.state import AccountState, Pot
from stepplan.catalog import Catalog
from stepplan.protocols.canonical import Usage


def ts(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).timestamp())


def test_prices_become_exact_integer_rates() -> None:
    assert rate_from_price("1.35") == 1_350_000
    assert rate_from_price("0.27") == 270_000
    assert rate_from_price("8.1") == 8_100_000
    assert rate_from_price("0") == 0
    assert rate_from_price("0.000001") == 1
    with pytest.raises(ValueError, match="more than 6 decimal places"):
        rate_from_price("0.0000001")
    with pytest.raises(ValueError):
        rate_from_price("-1")
    with pytest.raises(ValueError):
        rate_from_price("cheap")


def test_cost_is_exact_and_never_negative() -> None:
    r = Rates(1_350_000, 270_000, 8_100_000)
    u = Usage(input=700, cache_read=300, cache_write=50, output=200, reasoning=80, known=True)
    assert r.cost(u) == 700 * 1_350_000 + 300 * 270_000 + 50 * 1_350_000 + 200 * 8_100_000
    assert r.cost(Usage(input=-5, output=-1)) == 0
    # ¥1.35 per 1M tokens × 1M tokens = ¥1.35 = 1,350,000 credits = 1.35e12 micro-credits.
    assert r.cost(Usage(input=1_000_000)) == 1_350_000 * 10**6
    assert credits_str(r.cost(Usage(input=1_000_000))) == "1350000"
    assert credits_str(1_999_999) == "1"  # display rounds down


def test_deepseek_time_of_day_windows() -> None:
    peak = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "12:00"}
    off = {"price_input": "4.5", "price_cache": "0.15", "price_output": "13.5"}
    cat = Catalog.build({"deepseek-v4-pro": {"price_windows": [
        {**peak, "price_input": "9.0"},
        {"start": "00:00", "end": "24:00", **off},
    ]}})
    book = PriceBook(cat)
    # Wednesday 10:00 Beijing = 02:00 UTC: the first (peak) window wins.
    assert book.rates("deepseek-v4-pro", ts("2026-11-25T02:00:00+00:00")) == Rates(9_000_000, 300_000, 27_000_000)
    # Wednesday 13:00 Beijing: off-peak.
    assert book.rates("deepseek-v4-pro", ts("2026-11-25T05:00:00+00:00")) == Rates(4_500_000, 150_000, 13_500_000)
    # Saturday 10:00 Beijing: off-peak.
    assert book.rates("deepseek-v4-pro", ts("2026-11-28T02:00:00+00:00")) == Rates(4_500_000, 150_000, 13_500_000)
    assert book.rates("step-3.5-flash", 0) == Rates(700_000, 140_000, 2_100_000)
    with pytest.raises(ValueError, match="unknown keys"):
        PriceBook(Catalog.build({"deepseek-v4-pro": {"price_windows": [{"start": "09:00", "hours": 3}]}}))
    with pytest.raises(ValueError, match="time zone"):
        PriceBook(Catalog.build({"deepseek-v4-pro": {"price_windows": [{"tz": "Mars/Olympus"}]}}))
    with pytest.raises(ValueError, match="end must be after start"):
        PriceBook(Catalog.build({"deepseek-v4-pro": {"price_windows": [{"start": "12:00", "end": "09:00"}]}}))


def test_calendar_months_clamp_and_never_drift() -> None:
    jan31 = ts("2027-01-31T08:00:00+00:00")
    assert add_months(jan31, 1) == ts("2027-02-28T08:00:00+00:00")
    assert add_months(jan31, 2) == ts("2027-03-31T08:00:00+00:00")  # computed from the start: no drift
    assert add_months(ts("2028-01-31T00:00:00+00:00"), 1) == ts("2028-02-29T00:00:00+00:00")
    assert add_months(ts("2026-11-25T18:00:00+00:00"), 12) == ts("2027-11-25T18:00:00+00:00")
    start = ts("2026-11-25T18:00:00+00:00")
    assert cycle_index(start, start) == 0
    assert cycle_index(start, ts("2026-12-25T17:59:59+00:00")) == 0
    assert cycle_index(start, ts("2026-12-25T18:00:00+00:00")) == 1
    assert cycle_index(start, ts("2027-11-25T17:00:00+00:00")) == 11
    assert Clock(offset=100).now() - Clock().now() in (99, 100, 101)
    assert Clock.from_env({"STEPPLAN_CLOCK_OFFSET": "86400"}).offset == 86400
    with pytest.raises(ValueError):
        Clock.from_env({"STEPPLAN_CLOCK_OFFSET": "tomorrow"})


def test_plan_defaults_and_overrides() -> None:
    cfg = BillingConfig.from_raw({})
    mini, plus, pro, mx = (cfg.plans[p] for p in ("flash-mini", "flash-plus", "flash-pro", "flash-max"))
    assert [p.monthly_credits // 10**6 for p in (mini, plus, pro, mx)] == [400_000_000, 1_600_000_000,
                                                                          8_000_000_000, 40_000_000_000]
    assert mini.prices == {"monthly": 4900, "quarterly": 12900, "yearly": 45600}
    assert mx.prices["yearly"] == 666600
    assert not mini.priority and plus.priority and pro.priority and mx.priority
    assert plus.concurrency > mini.concurrency and plus.rpm > mini.rpm  # priority rate
    assert mini.window_5h == mini.window_week == 0  # window limits off by default
    assert cfg.packs["small"].credits == 400_000_000 * 10**6 and cfg.packs["large"].price == 9900
    assert cfg.packs["small"].days == 30
    cfg = BillingConfig.from_raw({"reserve_output_tokens": 1000, "plans": {
        "flash-mini": {"rpm": 5, "window_5h_credits": 100},
        "team": {"monthly_credits": 10, "prices": {"yearly": "1"}}}})
    assert cfg.plans["flash-mini"].rpm == 5 and cfg.plans["flash-mini"].window_5h == 100 * 10**6
    assert cfg.plans["flash-mini"].monthly_credits == 400_000_000 * 10**6
    assert cfg.plans["team"].prices == {"yearly": 100} and cfg.reserve_output_tokens == 1000
    with pytest.raises(ValueError, match="unknown keys"):
        BillingConfig.from_raw({"plans": {"flash-mini": {"credits_per_month": 1}}})
    with pytest.raises(ValueError, match="unknown keys"):
        BillingConfig.from_raw({"lease_size": 1})
    with pytest.raises(ValueError):
        BillingConfig.from_raw({"plans": {"x": {"monthly_credits": 1, "prices": {"weekly": "1"}}}})
    assert fen("49") == 4900 and fen("0.01") == 1 and yuan(6634) == "66.34"
    with pytest.raises(ValueError):
        fen("1.001")


def test_reservation_is_estimate_capped() -> None:
    r = Rates(700_000, 140_000, 2_100_000)
    assert reservation_amount(r, 100, 1000, 10**18) == 100 * 700_000 + 1000 * 2_100_000
    assert reservation_amount(r, 100, 1000, 5) == 5


def _acct(*pots: Pot) -> AccountState:
    a = AccountState(1)
    for p in pots:
        a.pots[p.id] = p
    a.credit = sorted(pots, key=lambda p: (p.expires_at, p.id))
    return a


def test_holds_come_from_the_earliest_expiring_pot_and_charges_are_capped() -> None:
    late = Pot(1, "subscription", 2_000, total=1_000, used=0, leased=500)
    early = Pot(2, "topup", 1_000, total=300, used=0, leased=300)
    a = _acct(late, early)
    holds = a.take(400, now=10, mono=0.0)
    assert holds is not None and [(p.id, x) for p, x in holds.credit] == [(2, 300), (1, 100)]
    assert a.take(500, now=10, mono=0.0) is None  # only 400 left in this process's leases: all or nothing
    st = a.settle(holds, cost=350, now=10, mono=0.0)
    assert st.charge == 350 and st.credit == [(2, 300), (1, 50)]
    assert early.leased == 0 and early.used == 300 and late.leased == 450 and late.held == 0
    # A call that costs more than it reserved is charged from spare lease, never beyond it.
    holds = a.take(10, now=10, mono=0.0)
    assert holds is not None
    st = a.settle(holds, cost=10_000, now=10, mono=0.0)
    assert st.charge == 450 and st.cost == 10_000
    assert late.leased == 0 and late.used == 500
    assert a.take(1, now=10, mono=0.0) is None

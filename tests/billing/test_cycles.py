"""Billing cycles with an injected clock (STEPPLAN_CLOCK_OFFSET): month rollover clears the
pool and issues a new one, terms end or renew, top-ups expire, the earliest-expiring
bucket pays first, upgrades issue the new tier at once with a pro-rated price, downgrades
wait for the next cycle, and optional window limits reset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.billing.conftest import DAY, buckets, cli_at, expected_micro, restart_at, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

MODEL = "step-3.7-flash"
EXTRA = """
[billing.packs.tiny]
credits = 3000
price = "1"
days = 30

[billing.plans.windowed]
monthly_credits = 1000000
prices = { monthly = "10", quarterly = "30" }
window_5h_credits = 20000
window_week_credits = 1000000
"""


@pytest.fixture
def gw(tmp_path: Path, fake: FakeUpstream) -> Iterator[Gateway]:
    g = start_gateway(tmp_path / "gw", fake, extra=EXTRA)
    yield g
    g.stop()


def setup_account(gw: Gateway, name: str, plan: str, period: str, *extra: str) -> tuple[str, dict[str, Any]]:
    cli_at(gw, 0, "accounts", "create", name)
    sub = json.loads(cli_at(gw, 0, "subscribe", name, "--plan", plan, "--period", period, "--json", *extra).stdout)
    key = json.loads(cli_at(gw, 0, "keys", "create", "--account", name, "--json").stdout)["key"]
    return key, sub


def usage_at(gw: Gateway, offset: int, name: str) -> dict[str, Any]:
    return json.loads(cli_at(gw, offset, "usage", name, "--json").stdout)


def call(gw: Gateway, key: str, fake: FakeUpstream, prompt: int = 1000, output: int = 100,
         max_tokens: int = 2000) -> httpx.Response:
    fake.queue_json(openai_completion("ok", usage={"prompt_tokens": prompt, "completion_tokens": output}))
    return httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": MODEL, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def used(b: dict[str, Any]) -> int:
    return int(b["credit_total_micro"]) - int(b["credit_residual_micro"])


def test_month_rollover_clears_the_pool_and_issues_a_new_one(gw: Gateway, fake: FakeUpstream) -> None:
    key, _ = setup_account(gw, "roll", "flash-mini", "quarterly")
    assert call(gw, key, fake).status_code == 200
    cost = expected_micro(MODEL, 1000, 0, 100)
    v0 = usage_at(gw, 0, "roll")
    pool0 = buckets(v0, "subscription")[0]
    assert used(pool0) == cost and pool0["next_reset_at"] == pool0["expire_at"]

    v1 = usage_at(gw, 31 * DAY, "roll")  # the second month of the quarter
    pool1 = buckets(v1, "subscription")
    assert len(pool1) == 1 and pool1[0]["id"] != pool0["id"]  # a new pool; the old one is gone
    assert pool1[0]["credit_residual"] == "400000000"  # full, nothing carried over
    assert pool1[0]["starts_at"] == pool0["expire_at"]
    assert v1["plan_credit_rate_limit"]["subscription_credit_left_rate"] == "1.000000"
    assert int(v1["usage"]["credit_consumed_micro"]) == cost  # the term's usage still shows

    restart_at(gw, 31 * DAY)
    assert call(gw, key, fake).status_code == 200
    v2 = usage_at(gw, 31 * DAY, "roll")
    assert used(buckets(v2, "subscription")[0]) == cost
    assert int(v2["usage"]["credit_consumed_micro"]) == 2 * cost
    assert gw.cli("ledger", "check").returncode == 0


def test_monthly_term_ends_without_renewal_and_renews_with_it(gw: Gateway, fake: FakeUpstream) -> None:
    key, _ = setup_account(gw, "once", "flash-mini", "monthly")
    renew_key, _ = setup_account(gw, "again", "flash-mini", "monthly", "--auto-renew")
    assert usage_at(gw, 32 * DAY, "once")["subscription"] is None
    renewed = usage_at(gw, 32 * DAY, "again")
    assert renewed["subscription"]["plan"] == "flash-mini" and renewed["subscription"]["auto_renew"] is True
    assert buckets(renewed, "subscription")[0]["credit_residual"] == "400000000"

    restart_at(gw, 32 * DAY)
    r = call(gw, key, fake)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "no_active_subscription"
    assert "no active step plan subscription" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.anthropic_base}/v1/messages", headers={"x-api-key": key},
                   json={"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "no active step plan subscription" in r.json()["error"]["message"]
    assert call(gw, renew_key, fake).status_code == 200


def test_topup_expiry_and_earliest_expiry_first(gw: Gateway, fake: FakeUpstream) -> None:
    key, _ = setup_account(gw, "packs", "flash-mini", "quarterly")
    cli_at(gw, 5 * DAY, "topup", "packs", "--pack", "small")  # expires at day 35
    cost = expected_micro(MODEL, 1000, 0, 100)

    restart_at(gw, 6 * DAY)  # pool expires at day 30 < day 35: the pool pays
    assert call(gw, key, fake).status_code == 200
    v = usage_at(gw, 6 * DAY, "packs")
    assert used(buckets(v, "subscription")[0]) == cost and used(buckets(v, "topup")[0]) == 0

    restart_at(gw, 31 * DAY)  # new pool expires at day 61 > day 35: the pack pays
    assert call(gw, key, fake).status_code == 200
    v = usage_at(gw, 31 * DAY, "packs")
    assert used(buckets(v, "subscription")[0]) == 0 and used(buckets(v, "topup")[0]) == cost
    assert buckets(v, "topup")[0]["type"] == 2
    assert v["plan_credit_rate_limit"]["topup_credit_left_rate"] < "1"

    v = usage_at(gw, 36 * DAY, "packs")  # the pack expired
    assert buckets(v, "topup") == [] and v["plan_credit_rate_limit"]["topup_credit_left_rate"] == "0"
    assert gw.cli("ledger", "check").returncode == 0


def test_a_call_larger_than_the_first_bucket_spills_into_the_next(gw: Gateway, fake: FakeUpstream) -> None:
    key, _ = setup_account(gw, "spill", "flash-mini", "quarterly")
    cli_at(gw, 5 * DAY, "topup", "spill", "--pack", "tiny")  # 3,000 credits, expires at day 35
    restart_at(gw, 31 * DAY)  # the second month's pool expires at day 61: the pack goes first
    assert call(gw, key, fake, prompt=1000, output=1000).status_code == 200
    cost = expected_micro(MODEL, 1000, 0, 1000)  # 9,450 credits
    v = usage_at(gw, 31 * DAY, "spill")
    pack, pool = buckets(v, "topup")[0], buckets(v, "subscription")[0]
    assert pack["expire_at"] < pool["expire_at"]
    assert used(pack) == 3000 * 10**6 and pack["credit_residual"] == "0"
    assert used(pool) == cost - 3000 * 10**6
    assert gw.cli("ledger", "check").returncode == 0


def test_mid_cycle_upgrade_issues_new_credit_at_once_with_prorated_price(gw: Gateway, fake: FakeUpstream) -> None:
    key, sub = setup_account(gw, "up", "flash-mini", "monthly")
    assert call(gw, key, fake).status_code == 200
    up = json.loads(cli_at(gw, 10 * DAY, "subscribe", "up", "--plan", "flash-plus", "--json").stdout)
    assert up["action"] == "upgraded" and up["plan"] == "flash-plus" and up["period"] == "monthly"
    remaining, length = sub["term_end"] - up["term_start"], sub["term_end"] - sub["term_start"]
    unused_fen = 4900 * remaining // length  # old price × (1 − used share), rounded down to a fen
    assert up["old_unused_value"] == f"{unused_fen // 100}.{unused_fen % 100:02d}"
    due = 9900 - unused_fen
    assert up["amount_due"] == f"{due // 100}.{due % 100:02d}"
    v = usage_at(gw, 10 * DAY, "up")
    pools = buckets(v, "subscription")
    assert len(pools) == 1 and pools[0]["credit_total"] == pools[0]["credit_residual"] == "1600000000"
    assert v["subscription"]["plan"] == "flash-plus" and v["subscription"]["priority_rate"] is True

    restart_at(gw, 10 * DAY)
    assert call(gw, key, fake).status_code == 200
    v = usage_at(gw, 10 * DAY, "up")
    assert used(buckets(v, "subscription")[0]) == expected_micro(MODEL, 1000, 0, 100)
    assert gw.cli("ledger", "check").returncode == 0


def test_downgrade_takes_effect_at_the_next_cycle(gw: Gateway, fake: FakeUpstream) -> None:
    setup_account(gw, "down", "flash-plus", "quarterly")
    out = json.loads(cli_at(gw, 5 * DAY, "subscribe", "down", "--plan", "flash-mini", "--json").stdout)
    assert out["action"] == "downgrade_scheduled"
    v = usage_at(gw, 6 * DAY, "down")
    assert v["subscription"]["plan"] == "flash-plus" and v["subscription"]["pending_plan"] == "flash-mini"
    assert buckets(v, "subscription")[0]["credit_total"] == "1600000000"
    v = usage_at(gw, 31 * DAY, "down")
    assert v["subscription"]["plan"] == "flash-mini" and v["subscription"]["pending_plan"] is None
    assert buckets(v, "subscription")[0]["credit_total"] == "400000000"


def test_window_limits_are_enforced_reported_and_reset(gw: Gateway, fake: FakeUpstream) -> None:
    key, _ = setup_account(gw, "win", "windowed", "monthly")
    cost = expected_micro(MODEL, 1000, 0, 100)  # 2,160 credits; the 5-hour window allows 20,000
    ok = 0
    for _ in range(12):  # each call reserves ~1,700 credits (200 output tokens) and costs 2,160
        r = call(gw, key, fake, max_tokens=200)
        if r.status_code != 200:
            break
        ok += 1
    assert r.status_code == 402 and "5-hour" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    assert ok == 9 and ok * cost <= 20_000 * 10**6
    v = usage_at(gw, 0, "win")
    assert v["five_hour_usage_left_rate"] < "0.2" and v["five_hour_usage_reset_time"] > v["now"]
    assert v["weekly_usage_left_rate"] > "0.9"

    restart_at(gw, 5 * 3600 + 60)  # next 5-hour window
    assert call(gw, key, fake, max_tokens=200).status_code == 200
    v = usage_at(gw, 5 * 3600 + 60, "win")
    assert v["five_hour_usage_left_rate"] > "0.8"
    assert gw.cli("ledger", "check").returncode == 0

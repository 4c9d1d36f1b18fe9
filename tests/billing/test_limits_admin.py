"""The plan's priority rate (concurrency and calls per minute), shared across processes
through Redis; the admin API and its token; the billing CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from stepplan.billing.clock import Clock
from stepplan.billing.limits import LocalLimiter, RedisLimiter
from stepplan.errors import RateLimited
from tests import clock as test_clock
from tests.billing.conftest import ADMIN, DAY, REDIS_URL, Admin, redis_available, start_gateway
from tests.clock import one_month_later
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_completion

LIMITED = """
[billing.plans.limited]
monthly_credits = 100000000
prices = { monthly = "1" }
concurrency = {concurrency}
rpm = {rpm}
"""


def body(model: str = "step-3.5-flash") -> dict:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


async def burst(urls: list[str], key: str, n: int, gate: threading.Event, rejected: int,
                path: str = "/step_plan/v1/chat/completions") -> list[httpx.Response]:
    """``n`` concurrent calls whose upstream answers are held until ``gate`` opens, which is once
    ``rejected`` of them were answered (the rest are in flight), or after 30 s if they never are."""
    async with httpx.AsyncClient(timeout=90) as c:
        tasks = [asyncio.create_task(c.post(f"{urls[i % len(urls)]}{path}", json=body(),
                                            headers={"authorization": f"Bearer {key}", "x-api-key": key}))
                 for i in range(n)]
        deadline = time.monotonic() + 30
        while sum(t.done() for t in tasks) < rejected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        gate.set()
        return await asyncio.gather(*tasks)


def held(fake: FakeUpstream, n: int) -> threading.Event:
    """Queue ``n`` upstream answers that wait for the returned gate."""
    gate = threading.Event()
    for _ in range(n):
        fake.queue(Reply(json=openai_completion("x"), gate=gate))
    return gate


def test_concurrency_limit_from_the_plan(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "gw", fake, extra=LIMITED.replace("{concurrency}", "2").replace("{rpm}", "0"))
    try:
        admin = Admin(gw)
        _, key = admin.account(plan="limited")
        codes = [r.status_code for r in asyncio.run(burst([gw.url], key, 6, held(fake, 6), rejected=4))]
        assert codes.count(200) == 2 and codes.count(429) == 4
        fake.reset()
        rs = asyncio.run(burst([gw.url], key, 3, held(fake, 3), rejected=1, path="/step_plan/v1/messages"))
        limited = [r for r in rs if r.status_code == 429]
        assert len(limited) == 1 and sum(r.status_code == 200 for r in rs) == 2
        err = limited[0].json()
        assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
        assert "upgrade the plan" in err["error"]["message"] and limited[0].headers["retry-after"]
        # the slots come back when calls finish
        fake.reset()
        fake.queue_json(openai_completion("x"))
        r = httpx.post(f"{gw.openai_base}/chat/completions", json=body(), headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        gw.stop()


def test_calls_per_minute_limit_from_the_plan(tmp_path: Path, fake: FakeUpstream) -> None:
    """Calls are counted per minute of the gateway's billing clock, which the test sets (to a whole
    minute when the gateway starts) and so reads exactly. Should that minute still turn during the
    five calls (a very slow start), the counts are split: the test retries with a fresh account."""
    shift = -test_clock.now() % 60
    gw = start_gateway(tmp_path / "gw", fake, extra=LIMITED.replace("{concurrency}", "0").replace("{rpm}", "3"),
                       env=test_clock.gateway_env(shift))
    try:
        admin = Admin(gw)
        for _ in range(3):
            _, key = admin.account(plan="limited")
            t0 = test_clock.now() + shift
            rs = [httpx.post(f"{gw.openai_base}/chat/completions", json=body(),
                             headers={"authorization": f"Bearer {key}"}) for _ in range(5)]
            t1 = test_clock.now() + shift
            if t0 // 60 == t1 // 60:
                break
        else:
            pytest.fail("the gateway's minute turned during each of 3 attempts")
        assert [r.status_code for r in rs] == [200, 200, 200, 429, 429]
        err = rs[-1].json()["error"]
        assert err["code"] == "rate_limit_exceeded" and "per minute" in err["message"]
        # retry-after: the seconds left in the gateway's minute when the call was refused
        assert 60 - t1 % 60 <= int(rs[-1].headers["retry-after"]) <= 60 - t0 % 60
    finally:
        gw.stop()


async def test_calls_per_minute_count_in_minutes_of_the_billing_clock() -> None:
    clock = test_clock.clock(-test_clock.now() % 60 + 5)  # 5 s into a minute
    lim = LocalLimiter(clock)
    for _ in range(3):
        await lim.enter(1, 0, 3)
    with pytest.raises(RateLimited) as ei:
        await lim.enter(1, 0, 3)
    assert 1 <= int(ei.value.headers["retry-after"]) <= 55
    await lim.enter(2, 0, 3)  # per account
    lim.clock = Clock(clock.offset + 60)  # the next minute of the same clock: a new count
    for _ in range(3):
        await lim.enter(1, 0, 3)
    with pytest.raises(RateLimited):
        await lim.enter(1, 0, 3)


@pytest.mark.redis
async def test_calls_per_minute_are_shared_by_replicas_through_redis() -> None:
    """Two processes on the same clock share one count per account and minute in Redis."""
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    clock = test_clock.clock(-test_clock.now() % 60 + 5)
    a, b = RedisLimiter(REDIS_URL, "owner-a", clock), RedisLimiter(REDIS_URL, "owner-b", clock)
    account = int(time.time_ns() % 10**12)  # a fresh counter
    try:
        for lim in (a, b, a):
            await lim.enter(account, 0, 3)
        for lim in (b, a):
            with pytest.raises(RateLimited):
                await lim.enter(account, 0, 3)
        b.clock = Clock(clock.offset + 60)  # a process whose minute differs counts elsewhere
        await b.enter(account, 0, 3)
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.postgres
@pytest.mark.redis
def test_concurrency_limit_is_shared_by_replicas_through_redis(tmp_path: Path, fake: FakeUpstream,
                                                               pg_url: str) -> None:
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    extra = LIMITED.replace("{concurrency}", "3").replace("{rpm}", "0")
    env = {"STEPPLAN_REDIS_URL": REDIS_URL}
    a = start_gateway(tmp_path / "a", fake, extra=extra, db_url=pg_url, env=env)
    b = start_gateway(tmp_path / "b", fake, extra=extra, db_url=pg_url, env=env)
    try:
        _, key = Admin(a).account(plan="limited")
        codes = [r.status_code for r in asyncio.run(burst([a.url, b.url], key, 10, held(fake, 10), rejected=7))]
        assert codes.count(200) == 3 and codes.count(429) == 7  # 3 in total, not 3 per process
    finally:
        a.stop()
        b.stop()


def test_admin_api_is_off_without_a_token(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/admin/v1/accounts", headers={"authorization": "Bearer anything"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.calendar
def test_admin_api(bgw: Gateway, admin: Admin, fake: FakeUpstream) -> None:
    url = bgw.url
    assert httpx.get(f"{url}/admin/v1/accounts").status_code == 401
    r = httpx.get(f"{url}/admin/v1/accounts", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    h = {"x-admin-token": ADMIN}
    assert httpx.get(f"{url}/admin/v1/plans", headers=h).json()["plans"][0]["id"] == "flash-mini"

    name = f"adm-{time.time_ns()}"
    assert httpx.post(f"{url}/admin/v1/accounts", json={"name": name}, headers=h).status_code == 201
    r = httpx.post(f"{url}/admin/v1/accounts", json={"name": name}, headers=h)
    assert r.status_code == 400 and "already exists" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/admin/v1/accounts/{name}/topups", json={"pack": "small"}, headers=h)
    assert r.status_code == 400 and "subscribers only" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/admin/v1/accounts/{name}/subscription", json={"plan": "flash-ultra"}, headers=h)
    assert r.status_code == 400 and "unknown plan" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/admin/v1/accounts/{name}/subscription", json={"plan": "flash-pro", "period": "yearly"},
                   headers=h)
    assert r.status_code == 200 and r.json()["action"] == "subscribed" and r.json()["amount_due"] == "1860.00"
    r = httpx.post(f"{url}/admin/v1/accounts/{name}/subscription", json={"plan": "flash-pro"}, headers=h)
    assert r.status_code == 400 and "already subscribed" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/admin/v1/accounts/{name}/topups", json={"pack": "large"}, headers=h).status_code == 201
    sub = httpx.get(f"{url}/admin/v1/accounts/{name}/subscription", headers=h).json()
    assert sub["subscription"]["plan"] == "flash-pro"
    # Buckets are listed in deduction order: earliest expiry first, ties by id. Which comes first
    # depends on the month: the pool ends a calendar month after subscribing, the pack 30 days after.
    listed = sub["plan_credit_rate_limit"]["credit_buckets"]
    pool, pack = (next(b for b in listed if b["kind"] == kind) for kind in ("subscription", "topup"))
    assert len(listed) == 2
    assert pool["expire_at"] == one_month_later(sub["subscription"]["activated_at"])
    assert pack["expire_at"] == pack["starts_at"] + 30 * DAY
    assert [b["id"] for b in listed] == [b["id"] for b in sorted((pool, pack),
                                                                 key=lambda b: (b["expire_at"], b["id"]))]

    key = httpx.post(f"{url}/admin/v1/accounts/{name}/keys", json={"name": "ci"}, headers=h).json()
    keys = httpx.get(f"{url}/admin/v1/keys", params={"account": name}, headers=h).json()["data"]
    assert [k["id"] for k in keys] == [key["id"]] and "key" not in keys[0]
    fake.queue_json(openai_completion("x"))
    auth = {"authorization": f"Bearer {key['key']}"}
    assert httpx.post(f"{bgw.openai_base}/chat/completions", json=body(), headers=auth).status_code == 200
    assert admin.usage(name)["usage"]["records"][0]["calls"] == 1
    [entry] = admin.entries(name)
    assert entry["request_id"] and entry["status"] == "ok" and entry["charges"]
    assert httpx.delete(f"{url}/admin/v1/keys/{key['id']}", headers=h).json()["revoked"] is True
    assert httpx.post(f"{bgw.openai_base}/chat/completions", json=body(), headers=auth).status_code == 401
    assert httpx.delete(f"{url}/admin/v1/keys/{key['id']}", headers=h).status_code == 404
    assert httpx.delete(f"{url}/admin/v1/accounts/{name}/subscription", headers=h).json()["auto_renew"] is False
    assert httpx.get(f"{url}/admin/v1/nothing", headers=h).status_code == 404
    assert httpx.get(f"{url}/admin/v1/ledger/check", headers=h).json()["ok"] is True


def test_billing_cli(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path / "cli", fake)
    out = gw.cli("plans", "list", "--json")
    ids = [p["id"] for p in json.loads(out.stdout)["plans"]]
    assert ids == ["flash-mini", "flash-plus", "flash-pro", "flash-max"]
    assert "priority rate" in gw.cli("plans", "list").stdout
    gw.cli("accounts", "create", "bob")
    assert gw.cli("topup", "bob", "--pack", "small", check=False).returncode == 1
    assert "subscribed" in gw.cli("subscribe", "bob", "--plan", "flash-plus", "--period", "quarterly").stdout
    assert gw.cli("subscribe", "bob", "--plan", "nope", check=False).returncode == 1
    assert gw.cli("subscribe", "nobody", "--plan", "flash-mini", check=False).returncode != 0
    gw.cli("topup", "bob", "--pack", "large")
    text = gw.cli("usage", "bob").stdout
    assert "Flash Plus" in text and "topup" in text
    view = json.loads(gw.cli("usage", "bob", "--json").stdout)
    assert view["plan_credit_rate_limit"]["credit_left"] == str(1_600_000_000 + 1_600_000_000)
    assert gw.cli("ledger", "check").returncode == 0

"""The plan's priority rate (concurrency and calls per minute), shared across processes
through Redis; the admin API and its token; the billing CLI."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.billing.conftest import ADMIN, REDIS_URL, Admin, redis_available, start_gateway
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

LIMITED = """
[billing.plans.limited]
monthly_credits = 100000000
prices = { monthly = "1" }
concurrency = {concurrency}
rpm = {rpm}
"""


def body(model: str = "step-3.5-flash") -> dict:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


async def burst(urls: list[str], key: str, n: int,
                path: str = "/step_plan/v1/chat/completions") -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as c:
        return await asyncio.gather(*(c.post(f"{urls[i % len(urls)]}{path}", json=body(),
                                             headers={"authorization": f"Bearer {key}", "x-api-key": key})
                                      for i in range(n)))


def test_concurrency_limit_from_the_plan(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "gw", fake, extra=LIMITED.replace("{concurrency}", "2").replace("{rpm}", "0"))
    try:
        admin = Admin(gw)
        _, key = admin.account(plan="limited")
        for _ in range(6):
            fake.queue_json(openai_completion("x"), first_delay=1.5)
        codes = [r.status_code for r in asyncio.run(burst([gw.url], key, 6))]
        assert codes.count(200) == 2 and codes.count(429) == 4
        for _ in range(3):
            fake.queue_json(openai_completion("x"), first_delay=1.5)
        rs = asyncio.run(burst([gw.url], key, 3, "/step_plan/v1/messages"))
        limited = [r for r in rs if r.status_code == 429]
        assert len(limited) == 1
        err = limited[0].json()
        assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
        assert "upgrade the plan" in err["error"]["message"] and limited[0].headers["retry-after"]
        # the slots come back when calls finish
        fake.queue_json(openai_completion("x"))
        r = httpx.post(f"{gw.openai_base}/chat/completions", json=body(), headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        gw.stop()


def test_calls_per_minute_limit_from_the_plan(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "gw", fake, extra=LIMITED.replace("{concurrency}", "0").replace("{rpm}", "3"))
    try:
        admin = Admin(gw)
        _, key = admin.account(plan="limited")
        if time.time() % 60 > 50:  # keep the test inside one wall-clock minute
            time.sleep(61 - time.time() % 60)
        codes = []
        for _ in range(5):
            r = httpx.post(f"{gw.openai_base}/chat/completions", json=body(),
                           headers={"authorization": f"Bearer {key}"})
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 429, 429]
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "per minute" in r.json()["error"]["message"]
    finally:
        gw.stop()


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
        for _ in range(10):
            fake.queue_json(openai_completion("x"), first_delay=1.5)
        codes = [r.status_code for r in asyncio.run(burst([a.url, b.url], key, 10))]
        assert codes.count(200) == 3 and codes.count(429) == 7  # 3 in total, not 3 per process
    finally:
        a.stop()
        b.stop()


def test_admin_api_is_off_without_a_token(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/admin/v1/accounts", headers={"authorization": "Bearer anything"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


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
    assert [b["kind"] for b in sub["plan_credit_rate_limit"]["credit_buckets"]] == ["subscription", "topup"]

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

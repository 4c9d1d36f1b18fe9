"""Every per-key setting, checked on a live gateway over HTTP, on the chat and messages protocols
(and the model allowlist on responses too): expiry, client-address allowlist (with trusted
proxies), model allowlist (step-router-v1 included), calls per minute, calls in flight, daily and
monthly Credit limits; each refusal with its StepFun code in the caller's protocol."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.billing.conftest import Admin, cli_at
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_completion
from tests.keys.conftest import BODIES, PATHS, Keys, call, code, message

PROTOCOLS = ["chat", "messages"]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_an_expired_key_is_refused_with_the_reason(kgw: Gateway, keys: Keys, proto: str) -> None:
    _, _, account = keys.make()
    # made "two hours ago" with a one-hour lifetime (the CLI on the injected clock)
    out = cli_at(kgw, -7200, "keys", "create", "--account", account, "--expires", "1h", "--json")
    import json

    expired = json.loads(out.stdout)["key"]
    r = call(kgw, expired, proto)
    assert r.status_code == 401 and code(r, proto) == "invalid_api_key"
    assert "expired at" in message(r)
    _, fresh, _ = keys.make(account, expires="30d")
    assert call(kgw, fresh, proto).status_code == 200


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_the_ip_allowlist_uses_the_client_address(kgw: Gateway, keys: Keys, proto: str) -> None:
    _, key, _ = keys.make(ip=["10.0.0.0/8", "192.168.7.0/24"])
    r = call(kgw, key, proto)  # from 127.0.0.1, no X-Forwarded-For
    assert r.status_code == 401 and code(r, proto) == "invalid_api_key"
    assert "client address (127.0.0.1)" in message(r)
    assert "10.0.0.0" not in r.text and "192.168.7" not in r.text  # the allowlist is not revealed
    # 127.0.0.1 is a trusted proxy here: its X-Forwarded-For is walked right to left
    assert call(kgw, key, proto, headers={"x-forwarded-for": "10.1.2.3"}).status_code == 200
    assert call(kgw, key, proto, headers={"x-forwarded-for": "203.0.113.9, 192.168.7.20, 127.0.0.1"}
                ).status_code == 200
    r = call(kgw, key, proto, headers={"x-forwarded-for": "10.1.2.3, 203.0.113.9"})  # the last untrusted hop
    assert r.status_code == 401 and "203.0.113.9" in message(r)
    _, local, _ = keys.make(ip="127.0.0.0/8")
    assert call(kgw, local, proto).status_code == 200


def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(tmp_path, fake: FakeUpstream) -> None:
    from tests.billing.conftest import start_gateway

    gw = start_gateway(tmp_path, fake)  # no trusted_proxies
    try:
        _, key, _ = Keys(Admin(gw)).make(ip="10.0.0.0/8")
        r = call(gw, key, "chat", headers={"x-forwarded-for": "10.1.2.3"})
        assert r.status_code == 401 and "127.0.0.1" in message(r)
    finally:
        gw.stop()


@pytest.mark.parametrize("proto", [*PROTOCOLS, "responses"])
def test_the_model_allowlist(kgw: Gateway, keys: Keys, proto: str) -> None:
    _, key, _ = keys.make(models=["step-3.5-flash"])
    assert call(kgw, key, proto, "step-3.5-flash").status_code == 200
    r = call(kgw, key, proto, "step-3.7-flash")
    assert r.status_code == 403 and code(r, proto) == "permission_denied", r.text
    assert "'step-3.7-flash'" in message(r)
    r = call(kgw, key, proto, "step-router-v1")
    assert r.status_code == 403 and "'step-router-v1'" in message(r)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_an_allowed_router_allows_the_engines_it_routes_to(kgw: Gateway, keys: Keys, proto: str) -> None:
    _, key, _ = keys.make(models="step-router-v1")
    r = call(kgw, key, proto, "step-router-v1")
    assert r.status_code == 200, r.text
    assert r.headers["x-stepplan-routed-model"] != "step-router-v1"  # an engine served it
    r = call(kgw, key, proto, r.headers["x-stepplan-routed-model"])  # but not by name
    assert r.status_code == 403


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_the_keys_own_calls_per_minute(kgw: Gateway, keys: Keys, proto: str) -> None:
    _, key, account = keys.make(rpm=3)
    _, other, _ = keys.make(account)  # same account, no key limit
    codes = []
    for _ in range(8):
        r = call(kgw, key, proto)
        codes.append(r.status_code)
        if r.status_code == 429:
            break
    # 3 per minute of the billing clock: a minute boundary in the middle allows at most 3 more
    assert codes[-1] == 429 and 3 <= codes.count(200) <= 6, codes
    assert code(r, proto) == "rate_limit_exceeded" and "this API key" in message(r) and "3 per minute" in message(r)
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert call(kgw, other, proto).status_code == 200  # the account's other keys are not limited


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_the_keys_own_concurrency(kgw: Gateway, keys: Keys, fake: FakeUpstream, proto: str) -> None:
    _, key, account = keys.make(concurrency=2)
    _, other, _ = keys.make(account)
    gate = threading.Event()
    for _ in range(2):
        fake.queue(Reply(json=openai_completion("x"), gate=gate))

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            h = {"authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}
            body = {"model": "step-3.5-flash", **BODIES[proto]}
            held = [asyncio.create_task(c.post(f"{kgw.url}{PATHS[proto]}", json=body, headers=h)) for _ in range(2)]
            deadline = time.monotonic() + 30
            while len(fake.requests) < 2 and time.monotonic() < deadline:  # both in flight upstream
                await asyncio.sleep(0.02)
            third = await c.post(f"{kgw.url}{PATHS[proto]}", json=body, headers=h)
            gate.set()
            return [third, *await asyncio.gather(*held)]

    third, *done = asyncio.run(go())
    assert third.status_code == 429 and code(third, proto) == "rate_limit_exceeded"
    assert "in flight for this API key" in message(third) and third.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200]
    assert call(kgw, key, proto).status_code == 200  # the slots came back
    assert call(kgw, other, proto).status_code == 200


@pytest.mark.parametrize(("proto", "limit"), [("chat", "credit_limit_daily"), ("messages", "credit_limit_daily"),
                                              ("chat", "credit_limit_monthly"), ("messages", "credit_limit_monthly")])
def test_the_keys_credit_limit(kgw: Gateway, kadmin: Admin, keys: Keys, proto: str, limit: str) -> None:
    key_id, key, account = keys.make(**{limit: "100"})
    _, other, _ = keys.make(account)
    statuses = []
    for _ in range(12):
        r = call(kgw, key, proto)
        statuses.append(r.status_code)
        if r.status_code != 200:
            break
    assert statuses[-1] == 402 and statuses.count(200) >= 2, statuses
    assert code(r, proto) == "quota_exceeded"
    label = "daily" if limit.endswith("daily") else "monthly"
    assert f"this API key's {label} Credit limit (100 Credit)" in message(r) and "not the plan's" in message(r)
    assert int(r.headers["retry-after"]) >= 1
    spent = sum(int(e["charged"]) for e in kadmin.entries(account) if e["key_id"] == key_id)
    assert 0 < spent <= 100_000_000  # never beyond the key's limit
    assert call(kgw, other, proto).status_code == 200  # the account still has credit
    assert kadmin.check()["ok"], kadmin.check()
    # raising the limit takes effect on the next call, and counts what was spent today
    assert keys.patch(key_id, **{limit: str(100 + 60)}).status_code == 200
    assert call(kgw, key, proto).status_code == 200
    assert kadmin.check()["ok"], kadmin.check()
    assert keys.patch(key_id, **{limit: None}).status_code == 200  # cleared: no key limit
    for _ in range(3):
        assert call(kgw, key, proto).status_code == 200


def test_last_use_is_recorded_without_a_write_per_call(kgw: Gateway, kadmin: Admin, keys: Keys) -> None:
    key_id, key, _ = keys.make()
    assert kadmin.http.get(f"/admin/v1/keys/{key_id}").json()["last_used_at"] is None
    t0 = int(time.time())
    for _ in range(3):
        assert call(kgw, key).status_code == 200
    deadline = time.monotonic() + 20  # written in batches every 5 s
    seen = None
    while time.monotonic() < deadline:
        seen = kadmin.http.get(f"/admin/v1/keys/{key_id}").json()["last_used_at"]
        if seen is not None:
            break
        time.sleep(0.2)
    from tests import clock as test_clock

    assert seen is not None and abs(seen - test_clock.now()) < 60 + (int(time.time()) - t0)


def test_a_rotated_key_keeps_its_periods_spending(kgw: Gateway, kadmin: Admin, keys: Keys) -> None:
    """The new key's Credit limit counts what the key it replaced spent in the period: rotating is no
    way around a limit."""
    key_id, key, account = keys.make(credit_limit_daily="100")
    for _ in range(12):
        r = call(kgw, key)
        if r.status_code != 200:
            break
    assert r.status_code == 402
    rotated = kadmin.http.post(f"/admin/v1/keys/{key_id}/rotate", json={"grace": "1h"})
    assert rotated.status_code == 201 and rotated.json()["credit_limit_daily"] == "100"
    r = call(kgw, rotated.json()["key"], "messages")
    assert r.status_code == 402 and code(r, "messages") == "quota_exceeded" and "key's own limit" in message(r)
    spent = sum(int(e["charged"]) for e in kadmin.entries(account) if e["key_id"] in (key_id, rotated.json()["id"]))
    assert 0 < spent <= 100_000_000

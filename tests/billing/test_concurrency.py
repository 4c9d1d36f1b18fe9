"""No overdraft under concurrency: 200 simultaneous calls on an account whose credit covers
50 reservations, in one process on SQLite and in two processes sharing PostgreSQL (with
and without Redis). The sum of settled charges never exceeds the credit, the rest get 402,
and the ledger total equals what the successful calls consumed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from tests.billing.conftest import REDIS_URL, Admin, buckets, redis_available, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_text_stream

MODEL = "step-3.5-flash"
MAX_TOKENS = 1000
BODY = orjson.dumps({"model": MODEL, "max_tokens": MAX_TOKENS, "stream": True,
                     "messages": [{"role": "user", "content": "Count the credits, please."}]})
# The gateway reserves (body bytes // 3) input tokens × input rate + max_tokens × output rate.
RESERVATION = (len(BODY) // 3) * 700_000 + MAX_TOKENS * 2_100_000  # micro-credits
COVERS = 50
CREDITS = -(-(COVERS * RESERVATION + RESERVATION // 2) // 1_000_000)  # whole credits, covers exactly 50
COST = 11 * 700_000 + 7 * 2_100_000  # the fake stream's usage: 11 prompt + 7 completion tokens
# Admitted calls stream for ~5 s (a chunk every 0.5 s, under the 5 s idle timeout), so every one
# of them still holds its reservation when the last of the 200 asks for one.
CHUNK_DELAY = 0.5


# With several processes a call can get 402 while another process still holds an unused
# slice of its lease (at most 1/8 of what was left when it leased, returned after the
# lease_idle_seconds): never an overdraft, but fewer than 50 may pass.
LOW_MULTI = COVERS - 10


def tiny_plan(concurrency: int = 0) -> str:
    return f"""
[billing.plans.tiny]
monthly_credits = {CREDITS}
prices = {{ monthly = "1" }}
concurrency = {concurrency}
rpm = 0
"""


async def fire(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def one(i: int) -> httpx.Response:
            return await client.post(f"{urls[i % len(urls)]}/step_plan/v1/chat/completions", content=BODY,
                                     headers={"authorization": f"Bearer {key}", "content-type": "application/json"})

        return await asyncio.gather(*(one(i) for i in range(n)))


def run_burst(fake: FakeUpstream, gws: list[Gateway], admin: Admin, n: int = 200) -> tuple[str, list[httpx.Response]]:
    assert CREDITS * 1_000_000 // RESERVATION == COVERS
    name, key = admin.account(plan="tiny")
    for _ in range(n):
        fake.queue_sse(openai_text_stream("counting credits " * 5, pieces=10), delay=CHUNK_DELAY)
    responses = asyncio.run(fire([g.url for g in gws], key, n))
    return name, responses


def assert_no_overdraft(admin: Admin, name: str, responses: list[httpx.Response], low: int) -> int:
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 402}, {c: codes.count(c) for c in set(codes)}
    ok = codes.count(200)
    assert low <= ok <= COVERS, (ok, [r.text for r in responses if r.status_code == 402][:3])
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in responses if r.status_code == 200)
    for r in responses:
        if r.status_code == 402:
            err = r.json()["error"]
            assert err["code"] == "quota_exceeded"
            assert "top-up" in err["message"] and "upgrade" in err["message"]
    view = admin.usage(name)
    consumed = int(view["usage"]["credit_consumed_micro"])
    assert consumed == ok * COST  # ledger total == credits consumed by the calls that ran
    assert view["usage"]["records"][0]["calls"] == ok
    pool = buckets(view, "subscription")[0]
    total, residual = int(pool["credit_total_micro"]), int(pool["credit_residual_micro"])
    assert total == CREDITS * 1_000_000
    assert total - residual == consumed <= total  # no overdraft
    check = admin.check()
    assert check["ok"], check["problems"]
    return ok


def test_200_concurrent_calls_on_credit_for_50_sqlite(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "gw", fake, extra=tiny_plan())
    try:
        admin = Admin(gw)
        name, responses = run_burst(fake, [gw], admin)
        assert_no_overdraft(admin, name, responses, low=COVERS)  # one process: exactly 50
    finally:
        gw.stop()


@pytest.mark.postgres
def test_200_concurrent_calls_two_processes_postgres(tmp_path: Path, fake: FakeUpstream, pg_url: str) -> None:
    a = start_gateway(tmp_path / "a", fake, extra=tiny_plan(), db_url=pg_url)
    b = start_gateway(tmp_path / "b", fake, extra=tiny_plan(), db_url=pg_url)
    try:
        admin = Admin(a)
        name, responses = run_burst(fake, [a, b], admin)
        assert_no_overdraft(admin, name, responses, low=LOW_MULTI)
    finally:
        a.stop()
        b.stop()


@pytest.mark.postgres
@pytest.mark.redis
def test_200_concurrent_calls_two_processes_postgres_redis(tmp_path: Path, fake: FakeUpstream, pg_url: str) -> None:
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    env = {"STEPPLAN_REDIS_URL": REDIS_URL}
    a = start_gateway(tmp_path / "a", fake, extra=tiny_plan(concurrency=1000), db_url=pg_url, env=env)
    b = start_gateway(tmp_path / "b", fake, extra=tiny_plan(concurrency=1000), db_url=pg_url, env=env)
    try:
        admin = Admin(a)
        name, responses = run_burst(fake, [a, b], admin)
        assert_no_overdraft(admin, name, responses, low=LOW_MULTI)
    finally:
        a.stop()
        b.stop()

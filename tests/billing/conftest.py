"""Fixtures for the billing tests: gateways with an admin token, an admin client, exact
expected costs computed from the published prices (independently of stepplan's own
pricing code), fresh PostgreSQL databases, and a clock shifted by STEPPLAN_CLOCK_OFFSET.

Every gateway runs on the tests' clock (tests/clock.py): the real one, or the date in
``STEPPLAN_TEST_DATE``. Tests whose outcome depends on the calendar (month lengths, bucket
expiry order) are marked ``calendar``; scripts/test.sh reruns them at fixed dates."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import clock as test_clock
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

ADMIN = "admin-secret-for-tests"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
DAY = 86_400

# CNY per 1M tokens: uncached input, cache hit, output (spec §6.2 / §6.3).
PRICES = {
    "step-3.7-flash": ("1.35", "0.27", "8.1"),
    "step-3.5-flash": ("0.7", "0.14", "2.1"),
    "step-3.5-flash-2603": ("0.7", "0.14", "2.1"),
    "deepseek-v4-pro": ("9.0", "0.30", "27.0"),
}


def expected_micro(model: str, uncached: int, cached: int = 0, output: int = 0, cache_write: int = 0) -> int:
    """Exact cost in micro-credits: tokens × ¥/1M × 10^12 micro-credits per ¥ / 10^6 tokens."""
    p_in, p_cache, p_out = (Decimal(x) for x in PRICES[model])
    cny_per_m = (uncached + cache_write) * p_in + cached * p_cache + output * p_out
    micro = cny_per_m * 1_000_000
    assert micro == micro.to_integral_value()
    return int(micro)


class Admin:
    """The admin HTTP API of one gateway."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)

    def _ok(self, r: httpx.Response) -> Any:
        assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        return r.json()

    def account(self, name: str | None = None, *, plan: str | None = "flash-max", period: str | None = None
                ) -> tuple[str, str]:
        """A fresh account (subscribed unless plan is None) and a key for it."""
        name = name or f"acct-{uuid.uuid4().hex[:10]}"
        self._ok(self.http.post("/admin/v1/accounts", json={"name": name}))
        if plan:
            self.subscribe(name, plan, period)
        return name, self.key(name)

    def key(self, name: str) -> str:
        return self._ok(self.http.post(f"/admin/v1/accounts/{name}/keys", json={}))["key"]

    def subscribe(self, name: str, plan: str, period: str | None = None, **kw: Any) -> dict[str, Any]:
        body = {"plan": plan, **({"period": period} if period else {}), **kw}
        return self._ok(self.http.post(f"/admin/v1/accounts/{name}/subscription", json=body))

    def topup(self, name: str, pack: str) -> dict[str, Any]:
        return self._ok(self.http.post(f"/admin/v1/accounts/{name}/topups", json={"pack": pack}))

    def usage(self, name: str, **params: Any) -> dict[str, Any]:
        return self._ok(self.http.get(f"/admin/v1/accounts/{name}/usage", params=params))

    def consumed(self, name: str, **params: Any) -> int:
        return int(self.usage(name, **params)["usage"]["credit_consumed_micro"])

    def entries(self, name: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The account's ledger entries, newest first."""
        return self._ok(self.http.get("/admin/v1/ledger/entries", params={"account": name, "limit": limit}))["data"]

    def check(self) -> dict[str, Any]:
        return self._ok(self.http.get("/admin/v1/ledger/check"))


def buckets(view: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    bs = view["plan_credit_rate_limit"]["credit_buckets"]
    return [b for b in bs if kind is None or b["kind"] == kind]


def start_gateway(tmp: Path, fake: FakeUpstream, *, extra: str = "", db_url: str | None = None,
                  env: dict[str, str] | None = None, workers: int = 1) -> Gateway:
    gw = make_gateway(tmp, fake, db_url=db_url, extra=extra, env={"STEPPLAN_ADMIN_TOKEN": ADMIN, **(env or {})})
    gw.start(workers=workers)
    return gw


def cli_at(gw: Gateway, offset: int, *args: str, check: bool = True) -> Any:
    """Run a stepplan command as if it were ``offset`` seconds later (than the tests' clock)."""
    saved = dict(gw.env)
    gw.env.update(test_clock.gateway_env(offset))
    try:
        return gw.cli(*args, check=check)
    finally:
        gw.env.clear()
        gw.env.update(saved)


def restart_at(gw: Gateway, offset: int) -> None:
    """Restart the gateway with its clock ``offset`` seconds ahead of the tests' clock."""
    gw.stop()
    gw.env.update(test_clock.gateway_env(offset))
    gw.start()


@pytest.fixture(scope="session", autouse=True)
def _meters_on_the_tests_clock() -> Iterator[None]:
    """In-process meters (``CreditMeter(...)`` reads ``Clock.from_env()``) run on the tests' clock.
    Gateways get it from make_gateway, which drops the test process's STEPPLAN_* variables."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in test_clock.gateway_env().items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def bgw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    """Billing gateway: every model → the OpenAI-protocol fake upstream."""
    gw = start_gateway(tmp_path_factory.mktemp("bgw"), fake)
    yield gw
    gw.stop()


ANTHROPIC_UPSTREAM = "".join(f'\n[models."{m}"]\nupstream = "fake_anthropic"\n'
                             for m in ("step-3.7-flash", "step-3.5-flash", "step-3.5-flash-2603"))


@pytest.fixture(scope="session")
def bgw_anth(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    """Billing gateway: the flash models → the Anthropic-protocol fake upstream."""
    gw = start_gateway(tmp_path_factory.mktemp("bgw-anth"), fake, extra=ANTHROPIC_UPSTREAM)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def admin(bgw: Gateway) -> Admin:
    return Admin(bgw)


@pytest.fixture(scope="session")
def admin_anth(bgw_anth: Gateway) -> Admin:
    return Admin(bgw_anth)


# ------------------------------------------------------------------------------------------ PostgreSQL
def _pg_available() -> bool:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False

    async def probe() -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _pg_exec(sql: str) -> None:
    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if os.environ.get("STEPPLAN_SKIP_PG") or not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"stepplan_test_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False

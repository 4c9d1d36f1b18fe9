"""A call that costs more than its reservation (issue 11 §2): the cost beyond what the
process's lease covers is taken from the account's free credit in the settlement
transaction, earliest-expiring pot first, never beyond what exists; only credit that
truly does not exist is recorded as ``uncollected``. Real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stepplan.billing import subscriptions as store
from stepplan.billing.check import check_ledger
from stepplan.billing.credit_meter import CreditMeter
from stepplan.billing.meter import Outcome
from stepplan.billing.plans import BillingConfig
from stepplan.errors import QuotaExceeded
from stepplan.protocols.canonical import Message, Request, Text, Usage
from stepplan.settings import load_settings
from stepplan.store.accounts import KeyInfo, create_account
from stepplan.store.db import make_engine, sessionmaker
from stepplan.store.migrate import migrate
from stepplan.store.models import CreditLease, CreditPot, UsageCharge, UsageEntry
from tests.billing.conftest import Admin, start_gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

MODEL = "step-3.5-flash"
IN_RATE, OUT_RATE = 700_000, 2_100_000  # micro-credits per token: ¥0.7 and ¥2.1 per 1M tokens
CREDIT = 1_000_000  # micro-credits per Credit
PACKS = ('[billing.packs.p3]\ncredits = 3000000\nprice = "3"\ndays = 3\n'
         '[billing.packs.p9]\ncredits = 9000000\nprice = "9"\ndays = 9\n')


@dataclass
class Env:
    settings: Any
    sessions: Any
    engine: Any
    cfg: BillingConfig
    key: KeyInfo


async def make_env(tmp: Path, db_url: str | None = None, billing: str = "", plan: str = "flash-mini") -> Env:
    tmp.mkdir(parents=True, exist_ok=True)
    url = db_url or f"sqlite:///{tmp}/m.db"
    (tmp / "stepplan.toml").write_text(f'[database]\nurl = "{url}"\n[billing]\nsweep_seconds = 3600\n{billing}')
    settings = load_settings(tmp / "stepplan.toml", env={})
    engine = make_engine(settings.database_url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    cfg = BillingConfig.from_raw(settings.billing)
    async with sessions() as s:
        acct = await create_account(s, f"a-{uuid.uuid4().hex[:10]}")
        await store.subscribe(s, cfg, acct.id, plan, None, int(time.time()))
        await s.commit()
    return Env(settings, sessions, engine, cfg, KeyInfo(1, acct.id, acct.name))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path)
    yield e
    await e.engine.dispose()


def req(max_tokens: int | None = 100) -> Request:
    return Request(model=MODEL, messages=[Message(role="user", content=[Text("hi")])], max_tokens=max_tokens)


async def call(meter: CreditMeter, env: Env, rid: str, prompt: int, out: int) -> None:
    """Reserve for a small request, then settle usage the upstream reported (maybe far larger)."""
    spec = env.settings.catalog.get(MODEL)
    res = await meter.reserve(env.key, spec, req(), rid, 10)
    await meter.settle(res, Outcome(served=spec, usage=Usage(input=prompt, output=out, known=True), status="ok"))


async def entry(env: Env, rid: str) -> UsageEntry:
    async with env.sessions() as s:
        return (await s.execute(select(UsageEntry).where(UsageEntry.request_id == rid))).scalar_one()


async def pots(env: Env) -> list[CreditPot]:
    async with env.sessions() as s:
        q = select(CreditPot).where(CreditPot.account_id == env.key.account_id).order_by(CreditPot.expires_at)
        return list((await s.execute(q)).scalars())


async def ledger_ok(env: Env) -> None:
    async with env.sessions() as s:
        report = await check_ledger(s)
    assert report.ok, report.problems


async def test_a_call_costing_nearly_the_whole_plan_is_charged_exactly(env: Env) -> None:
    """The reproduction from the issue: Flash Mini (400,000,000 Credit), one step-3.5-flash call
    reporting 571,413,030 prompt tokens and 10 output tokens: 399,989,142 Credit, all collected."""
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        await call(meter, env, "big", 571_413_030, 10)
        e = await entry(env, "big")
        expected = 571_413_030 * IN_RATE + 10 * OUT_RATE
        assert expected == 399_989_142 * CREDIT
        assert (e.cost, e.charged, e.uncollected) == (expected, expected, 0)
        [pot] = await pots(env)
        assert pot.total - pot.used == (400_000_000 - 399_989_142) * CREDIT
        assert meter.stats["extra"] == 1
        # the account can still spend what is left, and not a micro-credit more
        await call(meter, env, "rest", 20_000_000, 0)
        e2 = await entry(env, "rest")
        assert e2.cost == 20_000_000 * IN_RATE
        assert e2.charged == 10_858 * CREDIT and e2.uncollected == e2.cost - e2.charged
    finally:
        await meter.stop()
    [pot] = await pots(env)
    assert (pot.used, pot.leased) == (pot.total, 0)
    await ledger_ok(env)


async def test_an_overrun_spills_over_three_buckets_earliest_expiry_first(tmp_path: Path) -> None:
    env = await make_env(tmp_path, billing=PACKS)
    try:
        async with env.sessions() as s:
            now = int(time.time())
            await store.topup(s, env.cfg, env.key.account_id, "p9", now)
            await store.topup(s, env.cfg, env.key.account_id, "p3", now)
            await s.commit()
        buckets = await pots(env)
        assert [p.kind for p in buckets] == ["topup", "topup", "subscription"]  # 3 days, 9 days, a month
        total = sum(p.total for p in buckets)
        meter = CreditMeter(env.settings, env.sessions)
        await meter.start()
        try:
            # 3M + 9M from the packs and 100M from the monthly pool: 112M Credit = 160M tokens at 0.7
            await call(meter, env, "spill", 160_000_000, 0)
        finally:
            await meter.stop()
        e = await entry(env, "spill")
        assert e.cost == 112_000_000 * CREDIT and e.charged == e.cost and e.uncollected == 0
        after = await pots(env)
        assert [p.used for p in after[:2]] == [p.total for p in after[:2]]  # both packs emptied first
        assert after[2].used == e.cost - after[0].total - after[1].total
        async with env.sessions() as s:
            rows = (await s.execute(select(UsageCharge.pot_id, UsageCharge.amount)
                                    .where(UsageCharge.request_id == "spill"))).all()
        assert e.pot_amount + sum(a for _, a in rows) == e.charged
        assert {e.pot_id, *(p for p, _ in rows)} == {p.id for p in after}
        assert sum(p.used for p in after) == e.charged and total - e.charged == after[2].total - after[2].used
        await ledger_ok(env)
    finally:
        await env.engine.dispose()


async def test_only_credit_that_does_not_exist_is_uncollected(env: Env) -> None:
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        await call(meter, env, "huge", 1_000_000_000, 0)  # 700M Credit against a 400M plan
    finally:
        await meter.stop()
    e = await entry(env, "huge")
    assert e.charged == 400_000_000 * CREDIT and e.uncollected == 300_000_000 * CREDIT
    [pot] = await pots(env)
    assert (pot.used, pot.leased) == (pot.total, 0)
    await ledger_ok(env)


async def test_a_window_limit_caps_what_an_overrun_takes(tmp_path: Path) -> None:
    plan = ('[billing.plans.win]\nmonthly_credits = 1000000000\nprices = { monthly = "1" }\n'
            'window_5h_credits = 50000000\n')
    env = await make_env(tmp_path, billing=plan, plan="win")
    try:
        meter = CreditMeter(env.settings, env.sessions)
        await meter.start()
        try:
            await call(meter, env, "w", 100_000_000, 0)  # 70M Credit; the 5-hour window allows 50M
        finally:
            await meter.stop()
        e = await entry(env, "w")
        assert e.charged == 50_000_000 * CREDIT and e.uncollected == 20_000_000 * CREDIT
        by_kind = {p.kind: p for p in await pots(env)}
        assert by_kind["window_5h"].used == e.charged and by_kind["subscription"].used == e.charged
        await ledger_ok(env)
    finally:
        await env.engine.dispose()


@pytest.mark.postgres
async def test_two_processes_on_postgresql_collect_overruns_without_overdrawing(tmp_path: Path, pg_url: str) -> None:
    """Two meters (as two gateway processes) on one PostgreSQL database: each overrun takes
    free credit in its settlement transaction, the other's lease is never touched, and 200
    concurrent overrunning calls collect exactly what the plan had, not a micro-credit more."""
    env = await make_env(tmp_path, db_url=pg_url)
    try:
        a, b = CreditMeter(env.settings, env.sessions), CreditMeter(env.settings, env.sessions)
        await a.start()
        await b.start()
        try:
            spec = env.settings.catalog.get(MODEL)
            held = await a.reserve(env.key, spec, req(1000), "held", 10)  # a holds a lease while b overruns
            await call(b, env, "b-big", 400_000_000, 0)  # 280M Credit
            e = await entry(env, "b-big")
            assert e.charged == e.cost == 280_000_000 * CREDIT
            await a.settle(held, Outcome(served=spec, usage=Usage(input=5, output=5, known=True), status="ok"))
            # 200 concurrent calls, each reserving little and reporting 1M prompt tokens (700,000 Credit)
            out = await asyncio.gather(*(call((a, b)[i % 2], env, f"burst-{i}", 1_000_000, 0) for i in range(200)),
                                       return_exceptions=True)
            refused = [x for x in out if x is not None]
            assert all(isinstance(x, QuotaExceeded) for x in refused), refused  # once nothing is left
            assert len(refused) < 200
        finally:
            await a.stop()
            await b.stop()
        [pot] = await pots(env)
        assert pot.used + pot.leased <= pot.total and pot.leased == 0
        async with env.sessions() as s:
            charged, cost, uncollected = (await s.execute(select(
                func.sum(UsageEntry.charged), func.sum(UsageEntry.cost), func.sum(UsageEntry.uncollected)))).one()
        assert charged == pot.used == pot.total  # everything that existed was collected
        assert cost - charged == uncollected > 0  # and only what did not exist is uncollected
        await ledger_ok(env)
    finally:
        await env.engine.dispose()


# ---------------------------------------------------------------------------------------- unwritable entries
async def test_an_entry_that_cannot_be_written_takes_no_other_entry_or_lease_with_it(tmp_path: Path) -> None:
    """A cost beyond the ledger's 64-bit columns (the pipeline rejects such upstream usage; this is
    the meter's own line of defence): the good entries of the same batch are written, and the bad
    call's charge goes back to the lease instead of staying stranded in it."""
    env = await make_env(tmp_path, billing="lease_idle_seconds = 0.2\n")
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        held = [await meter.reserve(env.key, spec, req(), f"c-{i}", 10) for i in range(3)]
        usages = [Usage(input=5, output=5, known=True), Usage(input=10**15, output=1, known=True),
                  Usage(input=7, output=7, known=True)]
        await asyncio.gather(*(meter.settle(r, Outcome(served=spec, usage=u, status="ok"))
                               for r, u in zip(held, usages, strict=True)))
        assert [(await entry(env, f"c-{i}")).charged for i in (0, 2)] == [
            5 * IN_RATE + 5 * OUT_RATE, 7 * IN_RATE + 7 * OUT_RATE]
        async with env.sessions() as s:
            assert (await s.execute(select(func.count()).select_from(UsageEntry))).scalar() == 2
        deadline = time.monotonic() + 15  # the idle return gives the whole lease back, the bad call's part too
        while (await pots(env))[0].leased and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        [pot] = await pots(env)
        assert pot.leased == 0 and pot.used == 5 * IN_RATE + 5 * OUT_RATE + 7 * IN_RATE + 7 * OUT_RATE
        await ledger_ok(env)
    finally:
        await meter.stop()
        await env.engine.dispose()


async def test_the_ledger_check_flags_a_lease_held_by_an_idle_live_process(tmp_path: Path) -> None:
    env = await make_env(tmp_path, billing="lease_idle_seconds = 0.2\nheartbeat_seconds = 0.2\n")
    try:
        meter = CreditMeter(env.settings, env.sessions)
        await meter.start()
        try:
            await call(meter, env, "one", 100, 10)
            deadline = time.monotonic() + 15  # an idle meter returns its leases: the check passes
            while (await pots(env))[0].leased and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await ledger_ok(env)
            # strand credit: a lease row this process's memory does not know about (as a lost entry did)
            async with env.sessions() as s:
                pot = (await pots(env))[0]
                await s.execute(CreditPot.__table__.update().where(CreditPot.id == pot.id)
                                .values(leased=CreditPot.leased + 1_000_000))
                await s.execute(CreditLease.__table__.insert().values(
                    owner=meter.owner, pot_id=pot.id, amount=1_000_000, updated_at=int(time.time())))
                await s.commit()
            deadline = time.monotonic() + 15
            while True:
                async with env.sessions() as s:
                    report = await check_ledger(s, env.cfg.owner_ttl_seconds, env.cfg.lease_idle_seconds)
                if not report.ok or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert any("stranded" in p and "nothing in flight" in p for p in report.problems), report.problems
        finally:
            await meter.stop()
    finally:
        await env.engine.dispose()


@pytest.mark.postgres
def test_two_gateway_processes_on_postgresql_charge_an_overrun_exactly(tmp_path: Path, fake: FakeUpstream,
                                                                        pg_url: str) -> None:
    """The issue's reproduction end to end with two gateway processes sharing PostgreSQL: the first
    process served a call (and returned its idle lease); a call through the second reporting
    571,413,030 prompt tokens is charged 399,989,142 Credit exactly, and the ledger check passes."""
    a = start_gateway(tmp_path / "a", fake, db_url=pg_url)
    b = start_gateway(tmp_path / "b", fake, db_url=pg_url)
    try:
        admin = Admin(a)
        name, key = admin.account(plan="flash-mini")
        body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        auth = {"authorization": f"Bearer {key}"}
        fake.queue_json(openai_completion("x", usage={"prompt_tokens": 10, "completion_tokens": 1}))
        assert httpx.post(f"{a.openai_base}/chat/completions", json=body, headers=auth, timeout=30).status_code == 200
        deadline = time.monotonic() + 20  # a's idle lease goes back to the pool (lease_idle_seconds)
        while any(x["credit_in_flight_micro"] != "0" for x in admin.usage(name)["plan_credit_rate_limit"][
                "credit_buckets"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        fake.queue_json(openai_completion("x", usage={"prompt_tokens": 571_413_030, "completion_tokens": 10}))
        r = httpx.post(f"{b.openai_base}/chat/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200
        big = next(e for e in admin.entries(name) if e["input_tokens"] == 571_413_030)
        assert (big["cost"], big["charged"], big["uncollected"]) == (str(399_989_142 * CREDIT),) * 2 + ("0",)
        assert admin.check()["ok"]
    finally:
        a.stop()
        b.stop()

"""The credit meter in-process against a real SQLite database: group commit, idempotent
settlement, a live process whose leases were reclaimed, abandoned reservations, and two
meters (as two processes would) sharing one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stepplan.billing import subscriptions as store
from stepplan.billing.check import check_ledger
from stepplan.billing.credit_meter import CreditMeter
from stepplan.billing.meter import Outcome
from stepplan.billing.plans import BillingConfig
from stepplan.errors import NoSubscription, QuotaExceeded
from stepplan.protocols.canonical import Message, Request, Text, Usage
from stepplan.settings import load_settings
from stepplan.store import ledger
from stepplan.store.accounts import KeyInfo, create_account
from stepplan.store.db import make_engine, sessionmaker
from stepplan.store.migrate import migrate
from stepplan.store.models import CreditPot, UsageEntry
from tests import clock as test_clock

MODEL = "step-3.5-flash"


@dataclass
class Env:
    settings: Any
    sessions: Any
    engine: Any
    key: KeyInfo
    cfg: BillingConfig


async def _env(tmp_path: Path, billing: str = "", plan: str | None = "flash-max") -> Env:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "stepplan.toml"
    cfg_path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/m.db"\n[billing]\nsweep_seconds = 3600\n{billing}')
    settings = load_settings(cfg_path, env={})
    engine = make_engine(settings.database_url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    cfg = BillingConfig.from_raw(settings.billing)
    async with sessions() as s:
        acct = await create_account(s, f"a{time.monotonic_ns()}")
        if plan:
            await store.subscribe(s, cfg, acct.id, plan, None, test_clock.now())
        await s.commit()
        return Env(settings, sessions, engine, KeyInfo(1, acct.id, acct.name), cfg)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await _env(tmp_path)
    yield e
    await e.engine.dispose()


def req(max_tokens: int | None = 100) -> Request:
    return Request(model=MODEL, messages=[Message(role="user", content=[Text("hi")])], max_tokens=max_tokens)


def outcome(meter: CreditMeter, out: int = 10, status: str = "ok") -> Outcome:
    spec = meter.settings.catalog.get(MODEL)
    return Outcome(served=spec, usage=Usage(input=5, output=out, known=True), status=status)


async def _used(env: Env) -> int:
    async with env.sessions() as s:
        return int((await s.execute(select(func.sum(CreditPot.used)))).scalar() or 0)


async def test_settle_is_idempotent_and_durable_when_awaited(env: Env) -> None:
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        res = await meter.reserve(env.key, spec, req(), "r-1", 10)
        f1 = meter.settle(res, outcome(meter))
        f2 = meter.settle(res, outcome(meter, out=999))  # a repeat never charges twice
        assert f1 is f2
        await f1
        async with env.sessions() as s:
            entries = list((await s.execute(select(UsageEntry))).scalars())
        assert len(entries) == 1 and entries[0].charged == 5 * 700_000 + 10 * 2_100_000
        assert await _used(env) == entries[0].charged
    finally:
        await meter.stop()
    async with env.sessions() as s:
        assert (await check_ledger(s)).ok


async def test_group_commit_batches_concurrent_settlements(env: Env) -> None:
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        reservations = [await meter.reserve(env.key, spec, req(), f"g-{i}", 10) for i in range(500)]
        await asyncio.gather(*(meter.settle(r, outcome(meter)) for r in reservations))
        assert meter.stats["entries"] == 500
        assert meter.stats["batches"] < 50  # hundreds of entries share a commit
        assert await _used(env) == 500 * (5 * 700_000 + 10 * 2_100_000)
    finally:
        await meter.stop()


async def test_no_subscription_and_quota_errors(tmp_path: Path) -> None:
    env = await _env(tmp_path, plan=None)
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        with pytest.raises(NoSubscription, match="no active step plan subscription"):
            await meter.reserve(env.key, env.settings.catalog.get(MODEL), req(), "n-1", 10)
    finally:
        await meter.stop()
        await env.engine.dispose()
    env = await _env(tmp_path / "q", billing='[billing.plans.tiny]\nmonthly_credits = 1000\nprices = {monthly = "1"}\n',
                     plan="tiny")
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        with pytest.raises(QuotaExceeded, match="top-up pack or upgrade"):
            await meter.reserve(env.key, env.settings.catalog.get(MODEL), req(max_tokens=1000), "q-1", 10)
        res = await meter.reserve(env.key, env.settings.catalog.get(MODEL), req(max_tokens=100), "q-2", 10)
        held = 10 * 700_000 + 100 * 2_100_000
        assert meter.headers(res)["x-stepplan-credit-remaining"] == str((1000 * 10**6 - held) // 10**6)
        await meter.settle(res, outcome(meter))
    finally:
        await meter.stop()
        await env.engine.dispose()


async def test_a_live_process_whose_leases_were_reclaimed_settles_directly(env: Env) -> None:
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        res = await meter.reserve(env.key, spec, req(), "z-1", 10)
        old_owner = meter.owner
        async with env.sessions() as s:  # another process decides we are dead
            assert await ledger.reap(s, old_owner, stale_before=None) > 0
            await s.commit()
        await meter.settle(res, outcome(meter))
        assert meter.owner != old_owner and meter.stats["direct"] == 1
        async with env.sessions() as s:
            [entry] = list((await s.execute(select(UsageEntry))).scalars())
            assert entry.charged == entry.cost == 5 * 700_000 + 10 * 2_100_000
            assert (await check_ledger(s)).ok
        res = await meter.reserve(env.key, spec, req(), "z-2", 10)  # and it keeps working
        await meter.settle(res, outcome(meter))
        assert await _used(env) == 2 * (5 * 700_000 + 10 * 2_100_000)
    finally:
        await meter.stop()


async def test_a_reservation_nobody_settles_is_settled_as_abandoned(tmp_path: Path) -> None:
    env = await _env(tmp_path, billing="abandon_after_seconds = 0\n")
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        res = await meter.reserve(env.key, env.settings.catalog.get(MODEL), req(), "lost-1", 10)
        meter.maintenance.abandon(time.monotonic() + 1)
        assert res.settled
        assert res.hold is not None and res.hold.fut is not None
        await res.hold.fut
        async with env.sessions() as s:
            [entry] = list((await s.execute(select(UsageEntry))).scalars())
        assert entry.status == "abandoned" and entry.charged == 0
        acct = res.hold.acct
        assert all(p.held == 0 for p in acct.pots.values())
    finally:
        await meter.stop()
        await env.engine.dispose()


async def test_two_meters_on_one_database_never_hold_more_than_the_credit(tmp_path: Path) -> None:
    credits = 100_000
    env = await _env(tmp_path, billing=f'[billing.plans.tiny]\nmonthly_credits = {credits}\n'
                                       'prices = {monthly = "1"}\n', plan="tiny")
    a, b = CreditMeter(env.settings, env.sessions), CreditMeter(env.settings, env.sessions)
    await a.start()
    await b.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        per = 10 * 700_000 + 1000 * 2_100_000

        async def one(m: CreditMeter, i: int) -> Any:
            try:
                return await m.reserve(env.key, spec, req(max_tokens=1000), f"t-{i}", 10)
            except QuotaExceeded:
                return None

        got = await asyncio.gather(*(one((a, b)[i % 2], i) for i in range(200)))
        held = [r for r in got if r is not None]
        assert credits * 10**6 // per - 2 <= len(held) <= credits * 10**6 // per
        assert sum(r.amount for r in held) <= credits * 10**6
        await asyncio.gather(*(((a, b)[i % 2]).settle(r, outcome(a)) for i, r in enumerate(held)))
    finally:
        await a.stop()
        await b.stop()
    async with env.sessions() as s:
        report = await check_ledger(s)
        assert report.ok, report.problems
        assert report.stats["credit_leased_micro"] == 0  # both returned their leases at shut-down
    await env.engine.dispose()


TINY_PACK = '[billing.packs.tiny]\ncredits = 3000\nprice = "1"\ndays = 1\n'


async def test_a_lease_just_taken_is_not_returned_as_idle_before_it_is_held(tmp_path: Path) -> None:
    """Regression: the maintenance loop could return a fresh lease (never held, so never
    'active') between leasing and holding; the call then skipped the earliest-expiring pot."""
    env = await _env(tmp_path, billing=TINY_PACK)
    async with env.sessions() as s:
        await store.topup(s, env.cfg, env.key.account_id, "tiny", test_clock.now())
        await s.commit()
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        now = meter.clock.now()
        acct = await meter.leasing.account(env.key.account_id, now)
        pack = acct.credit[0]
        assert pack.kind == "topup" and len(acct.credit) == 2
        amount = 20_000 * 10**6  # more than the pack's 3,000 credits: the rest comes from the pool
        async with acct.lock:
            await meter.leasing.lease(acct, amount, now)
            assert pack.leased == 3000 * 10**6
            await meter.maintenance.return_idle(time.monotonic())  # a maintenance tick while the reservation is leasing
        assert pack.leased == 3000 * 10**6
        await meter.maintenance.return_idle(time.monotonic())  # and right after: a lease just taken is not idle
        assert pack.leased == 3000 * 10**6
        holds = acct.take(amount, now, time.monotonic())
        assert holds is not None and holds.credit[0] == (pack, 3000 * 10**6)
        acct.release(holds)
    finally:
        await meter.stop()
        await env.engine.dispose()


async def test_an_idle_meter_writes_at_once_and_a_busy_database_falls_back_to_the_writer(tmp_path: Path) -> None:
    """With nothing to batch with, settlement commits inline (the future is done on return); when the
    database is locked by another connection, the entry goes to the writer task, which retries until
    the lock is gone, and is written exactly once."""
    import sqlite3

    env = await _env(tmp_path)
    meter = CreditMeter(env.settings, env.sessions)
    await meter.start()
    try:
        spec = env.settings.catalog.get(MODEL)
        res = await meter.reserve(env.key, spec, req(), "inline-1", 10)
        fut = meter.settle(res, outcome(meter))
        assert fut.done()  # committed inline: no hand-off to the writer task
        res = await meter.reserve(env.key, spec, req(), "inline-2", 10)
        other = sqlite3.connect(str(tmp_path / "m.db"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            fut = meter.settle(res, outcome(meter))
            assert not fut.done()
            await asyncio.sleep(0.2)
            assert not fut.done()  # the writer backs off while the database is locked
        finally:
            other.execute("ROLLBACK")
            other.close()
        await asyncio.wait_for(fut, 10)
        async with env.sessions() as s:
            ids = sorted(e.request_id for e in (await s.execute(select(UsageEntry))).scalars())
            assert ids == ["inline-1", "inline-2"]
            assert (await check_ledger(s)).ok
        assert await _used(env) == 2 * (5 * 700_000 + 10 * 2_100_000)
    finally:
        await meter.stop()
        await env.engine.dispose()

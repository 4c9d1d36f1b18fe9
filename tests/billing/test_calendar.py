"""Credit buckets at fixed dates: the order of ``credit_buckets`` (earliest expiry first, ties
by id: the deduction order) and the exact expiry of the monthly pool and of a 30-day pack, in
a 30-day month, 31-day months, February, a leap day and on last days of months, where the
two orders differ. Plus the test-only clock hooks (STEPPLAN_CLOCK_AT, STEPPLAN_TEST_DATE).

Expected dates are written out below and computed with datetime/calendar here, never with
stepplan's own month arithmetic."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepplan.billing import clock as clock_mod
from stepplan.billing import subscriptions as store
from stepplan.billing.clock import Clock
from stepplan.billing.plans import BillingConfig
from stepplan.billing.usage import account_usage
from stepplan.settings import load_settings
from stepplan.store.accounts import create_account
from stepplan.store.db import make_engine, sessionmaker
from stepplan.store.migrate import migrate
from tests import clock as test_clock
from tests.billing.conftest import ADMIN, DAY, Admin, buckets, expected_micro
from tests.clock import one_month_later
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

SUB, TOPUP = "subscription", "topup"
PACK_DAYS = 30  # the `small` pack (spec §5.1)


@dataclass(frozen=True)
class Case:
    at: str  # the instant the account subscribes and buys a `small` pack (UTC)
    pool_expires: str  # the date the monthly pool expires (same time of day)
    pack_expires: str  # the date the pack expires (30 days later, same time of day)
    order: tuple[str, str]  # credit_buckets kinds, earliest expiry first

    @property
    def id(self) -> str:
        return self.at[:10]


CASES = [
    Case("2026-04-15T12:00:00Z", "2026-05-15", "2026-05-15", (SUB, TOPUP)),  # 30-day month: a tie at most
    Case("2026-12-05T12:00:00Z", "2027-01-05", "2027-01-04", (TOPUP, SUB)),  # 31-day month (CI failed here)
    Case("2026-07-31T12:00:00Z", "2026-08-31", "2026-08-30", (TOPUP, SUB)),  # last day of a 31-day month
    Case("2026-02-14T12:00:00Z", "2026-03-14", "2026-03-16", (SUB, TOPUP)),  # February
    Case("2028-02-29T12:00:00Z", "2028-03-29", "2028-03-30", (SUB, TOPUP)),  # leap day
    Case("2026-01-31T12:00:00Z", "2026-02-28", "2026-03-02", (SUB, TOPUP)),  # last day: clamped to Feb 28
    Case("2026-03-31T12:00:00Z", "2026-04-30", "2026-04-30", (SUB, TOPUP)),  # last day: clamped to Apr 30
]
IDS = [c.id for c in CASES]


def ts(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp())


def utc(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def seconds_into_day(t: int) -> int:
    return t % DAY


def check_buckets(view: dict[str, Any], case: Case, sub_start: int, pack_start: int) -> None:
    """The exact kinds, order and expiry of the two buckets bought at ``case.at``."""
    bs = buckets(view)
    assert [b["kind"] for b in bs] == list(case.order), [(b["kind"], b["expire_at"], b["id"]) for b in bs]
    assert [(b["expire_at"], b["id"]) for b in bs] == sorted((b["expire_at"], b["id"]) for b in bs)
    pool, pack = buckets(view, SUB)[0], buckets(view, TOPUP)[0]
    assert pool["expire_at"] == one_month_later(sub_start)
    assert pool["expire_at"] == ts(case.pool_expires + "T00:00:00") + seconds_into_day(sub_start)
    assert pack["expire_at"] == pack_start + PACK_DAYS * DAY
    assert pack["expire_at"] == ts(case.pack_expires + "T00:00:00") + seconds_into_day(pack_start)
    assert view["plan_credit_rate_limit"]["subscription_credit_reset_time"] == pool["expire_at"]
    assert [b["type"] for b in bs] == [1 if k == SUB else 2 for k in case.order]


# ------------------------------------------------------------------ exactly, in process
@dataclass
class Db:
    sessions: Any
    cfg: BillingConfig


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    path = tmp_path / "stepplan.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/c.db"\n')
    settings = load_settings(path, env={})
    engine = make_engine(settings.database_url)
    await migrate(engine)
    yield Db(sessionmaker(engine), BillingConfig.from_raw(settings.billing))
    await engine.dispose()


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_bucket_order_and_expiry_at_a_fixed_instant(db: Db, case: Case) -> None:
    """Subscription and pack bought in the same second: in a 30-day month they expire together
    and the tie goes to the lower id (the pool, issued first)."""
    t = ts(case.at[:-1])
    async with db.sessions() as s:
        acct = await create_account(s, f"cal-{case.id}")
        await store.subscribe(s, db.cfg, acct.id, "flash-mini", "monthly", t)
        await store.topup(s, db.cfg, acct.id, "small", t)
        await s.commit()
    for later in (0, 3600, DAY - 1):  # the listing does not change while both buckets live
        async with db.sessions() as s:
            view = await account_usage(s, db.cfg, acct.id, t + later)
            await s.commit()
        check_buckets(view, case, t, t)
    pool, pack = buckets(view, SUB)[0], buckets(view, TOPUP)[0]
    if pool["expire_at"] == pack["expire_at"]:
        assert pool["id"] < pack["id"] and case.order == (SUB, TOPUP)


@pytest.mark.calendar
async def test_bucket_order_and_expiry_on_the_tests_clock(db: Db) -> None:
    """The same on today's date (or STEPPLAN_TEST_DATE): the order computed independently."""
    t = test_clock.now()
    async with db.sessions() as s:
        acct = await create_account(s, "today")
        await store.subscribe(s, db.cfg, acct.id, "flash-mini", "monthly", t)
        await store.topup(s, db.cfg, acct.id, "small", t)
        view = await account_usage(s, db.cfg, acct.id, t)
        await s.commit()
    pool_end, pack_end = one_month_later(t), t + PACK_DAYS * DAY
    want = [SUB, TOPUP] if pool_end <= pack_end else [TOPUP, SUB]  # on a tie the pool (issued first) leads
    assert [b["kind"] for b in buckets(view)] == want
    assert [b["expire_at"] for b in buckets(view)] == sorted([pool_end, pack_end])


# ------------------------------------------------------------------ through the server and the CLI
def _gateway_at(tmp: Path, fake: FakeUpstream, at: str) -> Gateway:
    gw = make_gateway(tmp, fake, env={"STEPPLAN_ADMIN_TOKEN": ADMIN, "STEPPLAN_CLOCK_AT": at})
    gw.env.pop("STEPPLAN_CLOCK_OFFSET", None)  # a STEPPLAN_TEST_DATE run: this test sets its own date
    gw.start()
    return gw


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_credit_buckets_in_deduction_order_at_fixed_dates(tmp_path: Path, fake: FakeUpstream, case: Case) -> None:
    """A gateway started with STEPPLAN_CLOCK_AT: the admin API, the key holder's usage API and
    ``stepplan usage`` list the buckets earliest expiry first, and a call draws on the first."""
    at = ts(case.at[:-1])
    gw = _gateway_at(tmp_path, fake, case.at)
    try:
        admin = Admin(gw)
        name, key = admin.account(plan="flash-mini", period="monthly")
        admin.topup(name, "small")
        view = admin.usage(name)
        sub_start = view["subscription"]["activated_at"]
        pack_start = buckets(view, TOPUP)[0]["starts_at"]
        assert at <= sub_start <= pack_start <= view["now"] < at + 3600  # the clock started at `at`
        check_buckets(view, case, sub_start, pack_start)
        listed = [b["id"] for b in buckets(view)]

        mine = httpx.get(f"{gw.openai_base}/usage", headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert mine.status_code == 200
        assert [b["id"] for b in buckets(mine.json())] == listed

        fake.queue_json(openai_completion("ok", usage={"prompt_tokens": 1000, "completion_tokens": 100}))
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": "step-3.5-flash", "max_tokens": 200,
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        after = buckets(admin.usage(name))
        assert [b["id"] for b in after] == listed
        spent = [int(b["credit_total_micro"]) - int(b["credit_residual_micro"]) for b in after]
        assert spent == [expected_micro("step-3.5-flash", 1000, 0, 100), 0]  # the first listed pays

        # `stepplan usage` as of a minute later: a CLI command reads STEPPLAN_CLOCK_AT when it starts
        later = utc(view["now"] + 60).strftime("%Y-%m-%dT%H:%M:%SZ")
        cli_view = json.loads(_cli_at(gw, later, "usage", name, "--json"))
        assert cli_view["now"] >= view["now"] + 60
        assert [b["id"] for b in buckets(cli_view)] == listed
        check_buckets(cli_view, case, sub_start, pack_start)
    finally:
        gw.stop()


def _cli_at(gw: Gateway, at: str, *args: str) -> str:
    saved = gw.env["STEPPLAN_CLOCK_AT"]
    gw.env["STEPPLAN_CLOCK_AT"] = at
    try:
        return gw.cli(*args).stdout
    finally:
        gw.env["STEPPLAN_CLOCK_AT"] = saved


# ------------------------------------------------------------------ the clock hooks themselves
def test_clock_at_starts_at_the_instant_and_advances_in_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_800_000_000.7]
    monkeypatch.setattr(clock_mod.time, "time", lambda: wall[0])
    c = Clock.from_env({"STEPPLAN_CLOCK_AT": "2028-02-29T12:00:00Z"})
    assert c.now() == ts("2028-02-29T12:00:00")
    wall[0] += 90.0
    assert c.now() == ts("2028-02-29T12:01:30")
    # no zone means UTC; a bare date means its midnight; other zones are converted
    assert Clock.from_env({"STEPPLAN_CLOCK_AT": "2028-02-29T12:00:00"}).now() == ts("2028-02-29T12:00:00")
    assert Clock.from_env({"STEPPLAN_CLOCK_AT": "2026-01-31"}).now() == ts("2026-01-31T00:00:00")
    assert Clock.from_env({"STEPPLAN_CLOCK_AT": "2026-03-31T08:00:00+08:00"}).now() == ts("2026-03-31T00:00:00")
    assert Clock.from_env({}).now() == int(wall[0])


def test_clock_hooks_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="STEPPLAN_CLOCK_AT must be an ISO 8601"):
        Clock.from_env({"STEPPLAN_CLOCK_AT": "next tuesday"})
    with pytest.raises(ValueError, match="not both"):
        Clock.from_env({"STEPPLAN_CLOCK_AT": "2026-01-31", "STEPPLAN_CLOCK_OFFSET": "60"})
    with pytest.raises(ValueError, match="STEPPLAN_TEST_DATE must look like"):
        test_clock._start("31/01/2026")


def test_a_bad_clock_at_stops_the_cli(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake)
    gw.env.pop("STEPPLAN_CLOCK_OFFSET", None)
    gw.env["STEPPLAN_CLOCK_AT"] = "yesterday"
    for args in (("accounts", "create", "x"), ("subscribe", "x", "--plan", "flash-mini")):
        out = gw.cli(*args, check=False)  # the settings read the clock once, for every command
        assert out.returncode != 0 and "STEPPLAN_CLOCK_AT must be an ISO 8601" in out.stdout + out.stderr


def test_the_tests_clock_reads_stepplan_test_date() -> None:
    assert test_clock._start("") is None
    assert test_clock._start("2028-02-29") == ts("2028-02-29T00:00:00")
    assert test_clock._start("2026-03-31T23:59:30") == ts("2026-03-31T23:59:30")
    if test_clock.START is None:
        assert test_clock.OFFSET == 0 and test_clock.gateway_env() == {}
    else:
        assert abs(test_clock.now() - test_clock.START) < 6 * 3600  # a session lasts hours at most
        assert test_clock.gateway_env() == {"STEPPLAN_CLOCK_OFFSET": str(test_clock.OFFSET)}
    assert test_clock.gateway_env(60) == {"STEPPLAN_CLOCK_OFFSET": str(test_clock.OFFSET + 60)}

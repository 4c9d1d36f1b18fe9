"""The Usage page's per-day cache gives the same rows as the query it saves, for ranges that
start and end mid-day, and never caches a day that can still change (today, a day just over)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert

from stepplan.console.queries import DAY, DayCache, daily
from stepplan.store import accounts
from stepplan.store.db import make_engine, sessionmaker
from stepplan.store.ledger import ENTRIES
from stepplan.store.migrate import migrate

NOW = 20_000 * DAY + 5 * 3600  # 05:00 on some day


def entry(i: int, t: int, account_id: int, model: str) -> dict[str, object]:
    return {"request_id": f"r{i}", "owner": "t", "account_id": account_id, "key_id": 1, "requested_model": model,
            "served_model": model, "input_tokens": 10 + i, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 5, "reasoning_tokens": 0, "usage_known": True, "rate_input": 1, "rate_cache": 0,
            "rate_output": 1, "cost": 15 + i, "charged": 15 + i, "pot_id": None, "pot_amount": 0, "uncollected": 0,
            "reserved": 15 + i, "status": "ok", "route_score": None, "first_byte_ms": None, "total_ms": None,
            "started_at": t, "created_at": t, "protocol": "openai"}


def key(rows: list) -> list:
    return sorted((r.day, r.requested, r.served, r.calls, r.charged, r.input) for r in rows)


async def test_day_cache_matches_the_query(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    await migrate(engine)
    sessions = sessionmaker(engine)
    async with sessions() as s:
        a = await accounts.create_account(s, "a")
        b = await accounts.create_account(s, "b")
        rows = [entry(i, NOW - i * 3001, a.id if i % 3 else b.id, "m1" if i % 2 else "m2") for i in range(400)]
        await s.execute(insert(ENTRIES), rows)
        await s.commit()
        cache = DayCache()
        for since, until in [(NOW - 10 * DAY, NOW + 1), (NOW - 10 * DAY - 777, NOW - 2 * DAY + 999),
                             (NOW - 3 * DAY, NOW - 3 * DAY + 60), (NOW - 14 * DAY, NOW + 1)]:
            for acct in (a.id, b.id):
                assert key(await cache.rows(s, acct, since, until, NOW)) == key(await daily(s, acct, since, until))
        # Today's new entry shows at once; days that are over were cached.
        await s.execute(insert(ENTRIES), [entry(1000, NOW - 60, a.id, "m1")])
        await s.commit()
        got = await cache.rows(s, a.id, NOW - 10 * DAY, NOW + 1, NOW)
        assert key(got) == key(await daily(s, a.id, NOW - 10 * DAY, NOW + 1))
        assert (a.id, NOW // DAY) not in cache._days and (a.id, NOW // DAY - 2) in cache._days
        # A day that ended less than the grace period ago is not cached either.
        assert (a.id, NOW // DAY - 1) in cache._days  # 05:00 today: yesterday ended 5 h ago
        early = DayCache()
        await early.rows(s, a.id, NOW - 3 * DAY, NOW + 1, NOW // DAY * DAY + 60)  # 00:01 today
        assert (a.id, NOW // DAY - 1) not in early._days
    await engine.dispose()

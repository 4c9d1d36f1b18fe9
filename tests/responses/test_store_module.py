"""The stored-responses table on its own: retention, account scoping, the previous_response_id chain, purge;
and the ``[responses]`` settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from stepplan.api.openai_responses import ResponsesState
from stepplan.settings import load_settings
from stepplan.store import stored_responses as store
from stepplan.store.db import make_engine, sessionmaker
from stepplan.store.migrate import migrate
from stepplan.store.models import Account

NOW = 1_800_000_000


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker]:
    engine = make_engine(f"sqlite:///{tmp_path}/store.db")
    await migrate(engine)  # the real migrations, 0005_responses included
    s = sessionmaker(engine)
    async with s() as db:
        db.add_all([Account(id=1, name="a", created_at=NOW), Account(id=2, name="b", created_at=NOW)])
        await db.commit()
    yield s
    await engine.dispose()


def item(text: str, role: str = "user") -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"id": f"msg_{text}", "type": "message", "role": role, "content": [{"type": part, "text": text}]}


async def put(s: async_sessionmaker, rid: str, *, account: int = 1, prev: str | None = None, expires: int = NOW + 60,
              said: str = "q", answered: str = "a") -> None:
    async with s() as db:
        await store.save(db, id=rid, account_id=account, previous_response_id=prev, model="m", status="completed",
                         input_items=[item(said)], response={"id": rid, "output": [item(answered, "assistant")]},
                         created_at=NOW, expires_at=expires)
        await db.commit()


async def test_chain_is_oldest_first_and_per_account(sessions: async_sessionmaker) -> None:
    await put(sessions, "r1", said="one", answered="1")
    await put(sessions, "r2", prev="r1", said="two", answered="2")
    await put(sessions, "r3", prev="r2", said="three", answered="3")
    async with sessions() as db:
        chain = await store.chain(db, 1, "r3", NOW)
        assert [i["content"][0]["text"] for i in chain or []] == ["one", "1", "two", "2", "three", "3"]
        assert await store.chain(db, 2, "r3", NOW) is None  # another account sees nothing
        assert await store.get(db, 2, "r1", NOW) is None
        got = await store.get(db, 1, "r1", NOW)
        assert got is not None and got[0]["id"] == "r1" and got[1] == [item("one")]


async def test_expired_responses_are_invisible_and_purged(sessions: async_sessionmaker) -> None:
    await put(sessions, "old", expires=NOW - 1)
    await put(sessions, "new", prev="old")
    async with sessions() as db:
        assert await store.get(db, 1, "old", NOW) is None
        assert await store.chain(db, 1, "old", NOW) is None
        chain = await store.chain(db, 1, "new", NOW)  # the chain stops at the expired link
        assert chain is not None and len(chain) == 2
        assert await store.remove(db, 1, "old", NOW) is False
        assert await store.purge(db, NOW) == 1
        await db.commit()
        assert await store.remove(db, 2, "new", NOW) is False
        assert await store.remove(db, 1, "new", NOW) is True


@pytest.mark.parametrize("toml, message", [
    ("retention_days = 0", "responses.retention_days"), ('retention_days = "30"', "responses.retention_days"),
    ('previous_secrets = "old"', "responses.previous_secrets"), ("keep = 1", "responses.keep: unknown key"),
])
def test_bad_responses_settings_fail_at_start_up(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(f"[responses]\n{toml}\n")
    with pytest.raises(ValueError, match=message):
        load_settings(tmp_path / "c.toml", env={})


def test_responses_settings(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[responses]\nretention_days = 0.5\nprevious_secrets = ["old"]\n')
    state = ResponsesState(load_settings(tmp_path / "c.toml", env={}), None, b"new")
    assert state.retention == 43_200
    from stepplan.reasoning_seal import Sealer

    assert state.sealer.open(Sealer(b"old").seal("kept")) is not None

"""Stored Responses API answers: saved per account, read back by id or as a ``previous_response_id``
chain, deleted by the client, purged when expired. Every query is scoped to one account."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import StoredResponse

T = StoredResponse.__table__
MAX_CHAIN = 1000  # previous_response_id links followed at most


async def save(s: AsyncSession, *, id: str, account_id: int, previous_response_id: str | None, model: str,
               status: str, input_items: list[dict[str, Any]], response: dict[str, Any], created_at: int,
               expires_at: int) -> None:
    """Insert one response. Caller commits."""
    await s.execute(insert(T).values(
        id=id, account_id=account_id, previous_response_id=previous_response_id, model=model[:128],
        status=status[:24], input_items=orjson.dumps(input_items).decode(), response=orjson.dumps(response).decode(),
        created_at=created_at, expires_at=expires_at))


Found = tuple[dict[str, Any], list[dict[str, Any]]]


async def get(s: AsyncSession, account_id: int, id: str, now: int) -> Found | None:
    """``(response, input_items)`` of a live response of this account, or None."""
    row = (await s.execute(select(T.c.response, T.c.input_items).where(
        T.c.id == id, T.c.account_id == account_id, T.c.expires_at > now))).first()
    if row is None:
        return None
    return orjson.loads(row.response), orjson.loads(row.input_items)


async def chain(s: AsyncSession, account_id: int, id: str, now: int) -> list[dict[str, Any]] | None:
    """The conversation up to and including response ``id``: every input item and output item of its
    ``previous_response_id`` chain, oldest first. None when ``id`` is not a live response of this account;
    the chain stops early at a link that was deleted or expired."""
    live = (T.c.account_id == account_id) & (T.c.expires_at > now)
    base = select(T.c.id, T.c.previous_response_id, literal(0).label("depth")).where(live, T.c.id == id)
    walk = base.cte("walk", recursive=True)
    step = select(T.c.id, T.c.previous_response_id, (walk.c.depth + 1).label("depth")).where(
        live, T.c.id == walk.c.previous_response_id, walk.c.depth < MAX_CHAIN)
    walk = walk.union_all(step)
    q = (select(T.c.input_items, T.c.response).join(walk, walk.c.id == T.c.id).order_by(walk.c.depth.desc()))
    rows = (await s.execute(q)).all()
    if not rows:
        return None
    items: list[dict[str, Any]] = []
    for row in rows:
        items.extend(orjson.loads(row.input_items))
        items.extend(orjson.loads(row.response).get("output") or [])
    return items


async def remove(s: AsyncSession, account_id: int, id: str, now: int) -> bool:
    """Delete a live response of this account; whether there was one. Caller commits."""
    res = await s.execute(delete(T).where(T.c.id == id, T.c.account_id == account_id, T.c.expires_at > now))
    return bool(res.rowcount)


async def purge(s: AsyncSession, now: int) -> int:
    """Delete expired responses; returns how many. Caller commits."""
    res = await s.execute(delete(T).where(T.c.expires_at <= now))
    return int(res.rowcount or 0)

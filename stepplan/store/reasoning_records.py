"""Reasoning records in the database: saved in batches, looked up by tool-call id, purged when expired."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ReasoningRecord
from .sql import dialect_insert, rowcount, table

RECORDS = table(ReasoningRecord)


async def save(s: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or refresh ``{"call_id", "reasoning", "expires_at"}`` rows. Caller commits."""
    stmt = dialect_insert(s, RECORDS)
    stmt = stmt.on_conflict_do_update(index_elements=["call_id"],
                                      set_={"reasoning": stmt.excluded.reasoning,
                                            "expires_at": stmt.excluded.expires_at})
    await s.execute(stmt, list(rows))


async def load(s: AsyncSession, call_ids: Sequence[str], now: int) -> dict[str, tuple[str, int]]:
    """``call_id -> (reasoning, expires_at)`` for the ids that have a live record."""
    q = select(RECORDS.c.call_id, RECORDS.c.reasoning, RECORDS.c.expires_at).where(
        RECORDS.c.call_id.in_(list(call_ids)), RECORDS.c.expires_at > now)
    return {row.call_id: (row.reasoning, row.expires_at) for row in await s.execute(q)}


async def purge(s: AsyncSession, now: int) -> int:
    """Delete expired records; returns how many. Caller commits."""
    res = await s.execute(delete(RECORDS).where(RECORDS.c.expires_at <= now))
    return int(rowcount(res) or 0)

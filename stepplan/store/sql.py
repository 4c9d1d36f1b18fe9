"""Statements that differ between SQLite and PostgreSQL, for every store module."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


def dialect(s: AsyncSession) -> str:
    """``sqlite`` or ``postgresql``: the database this session talks to."""
    return s.get_bind().dialect.name


def dialect_insert(s: AsyncSession, table: Any) -> Any:
    """An INSERT for this session's database that supports ``on_conflict_do_update``."""
    if dialect(s) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def upsert(s: AsyncSession, table: Any, values: dict[str, Any], keys: list[str], set_: dict[str, Any]) -> Any:
    """INSERT ``values``, or on a conflict on ``keys`` UPDATE with ``set_``."""
    return dialect_insert(s, table).values(**values).on_conflict_do_update(index_elements=keys, set_=set_)

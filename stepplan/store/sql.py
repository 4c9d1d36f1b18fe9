"""Helpers every store module shares: statements that differ between SQLite and PostgreSQL,
and typed access to what SQLAlchemy's typing leaves out."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession


def dialect(s: AsyncSession) -> str:
    """``sqlite`` or ``postgresql``: the database this session talks to."""
    return s.get_bind().dialect.name


def dialect_insert(s: AsyncSession, table: Any) -> Any:
    """An INSERT for this session's database that supports ``on_conflict_do_update``."""
    if dialect(s) == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def upsert(s: AsyncSession, table: Any, values: dict[str, Any], keys: list[str], set_: dict[str, Any]) -> Any:
    """INSERT ``values``, or on a conflict on ``keys`` UPDATE with ``set_``."""
    return dialect_insert(s, table).values(**values).on_conflict_do_update(index_elements=keys, set_=set_)


def table(model: Any) -> Table:
    """A mapped class's ``Table`` (typed as one: ``__table__`` is typed as any ``FromClause``)."""
    return cast(Table, model.__table__)


def rowcount(result: object) -> int:
    """The rows an UPDATE or DELETE matched (``AsyncSession.execute`` is typed as returning a
    plain ``Result``, which has no ``rowcount``)."""
    return cast("CursorResult[Any]", result).rowcount

"""Group-commit writers: one call writes a batch of ledger entries in one transaction.

Two implementations of the same contract (:func:`stepplan.store.ledger.write_batch`'s
statements, lock order and checks):

* :class:`SqliteWriter` — the embedded default. Its own ``sqlite3`` connection to the
  same WAL database runs the whole batch (``BEGIN IMMEDIATE``, two ``executemany``
  inserts, the pot and lease updates, ``COMMIT``) directly, without SQLAlchemy's
  per-statement overhead or a thread hop per statement.
* :class:`SessionWriter` — SQLAlchemy (used for PostgreSQL, and for SQLite databases
  that are not files).

Both raise :class:`Conflict` for an integrity violation (a duplicate request id, or a
lease that no longer covers its conversion), :class:`~stepplan.store.ledger.LeaseLost`
when this owner's lease row is gone, and :class:`Transient` for errors worth retrying.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .db import async_url
from .ledger import CHARGES, ENTRIES, Extra, LeaseLost, extra_pots, plan_extras, write_batch


class Conflict(Exception):
    """The batch violated a constraint; nothing was written."""


class Transient(Exception):
    """The database was busy or unreachable; nothing was written; try again."""


class Writer(Protocol):
    async def write(self, owner: str, entries: Sequence[dict[str, Any]], charges: Sequence[dict[str, Any]],
                    converted: dict[int, int], now: int, extras: Sequence[Extra] = ()) -> None: ...

    async def checkpoint(self) -> None: ...

    async def close(self) -> None: ...


class SessionWriter:
    def __init__(self, sessions: Any):
        self.sessions = sessions

    async def write(self, owner: str, entries: Sequence[dict[str, Any]], charges: Sequence[dict[str, Any]],
                    converted: dict[int, int], now: int, extras: Sequence[Extra] = ()) -> None:
        try:
            async with self.sessions() as s:
                await write_batch(s, owner, entries, charges, converted, now, extras)
                await s.commit()
        except IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc

    async def checkpoint(self) -> None:
        return None

    async def close(self) -> None:
        return None


ENTRY_COLUMNS = [c.name for c in ENTRIES.columns if c.name != "id"]
CHARGE_COLUMNS = [c.name for c in CHARGES.columns if c.name != "id"]
_INSERT_ENTRY = (f"INSERT INTO usage_entries ({', '.join(ENTRY_COLUMNS)}) "
                 f"VALUES ({', '.join('?' for _ in ENTRY_COLUMNS)})")
_INSERT_CHARGE = (f"INSERT INTO usage_charges ({', '.join(CHARGE_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in CHARGE_COLUMNS)})")
_entry_row = operator.itemgetter(*ENTRY_COLUMNS)
_charge_row = operator.itemgetter(*CHARGE_COLUMNS)
_UPDATE_POT = "UPDATE credit_pots SET used = used + ?, leased = leased - ? WHERE id = ?"
_FREE = "SELECT id, total - used - leased FROM credit_pots WHERE id IN ({})"
_UPDATE_LEASE = ("UPDATE credit_leases SET amount = amount - ?, updated_at = ? "
                 "WHERE owner = ? AND pot_id = ? AND amount >= ?")


class SqliteWriter:
    """Writes each batch on the event loop thread with its own ``sqlite3`` connection.

    Handing the batch to a thread looked cheaper but is not: every row binding needs the
    GIL, which a busy event loop holds for up to the 5 ms switch interval, so a threaded
    writer stalled for milliseconds per batch. Inline, a batch costs its C-level
    ``executemany`` time (microseconds per entry) and nothing else. It never blocks on
    another writer: ``busy_timeout`` is 0, and a busy database raises :class:`Transient`
    so the caller backs off asynchronously. Automatic checkpoints are off on this
    connection (a checkpoint would fsync on the loop); :meth:`checkpoint` runs a passive
    one in a thread.
    """

    def __init__(self, path: str):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-checkpoint")

    @classmethod
    def for_url(cls, url: str) -> SqliteWriter | None:
        """A writer for a file-backed SQLite URL, else None."""
        u = make_url(async_url(url))
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or \
                u.database.startswith("file:"):
            return None
        return cls(u.database)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def _write(self, owner: str, entries: Sequence[dict[str, Any]], charges: Sequence[dict[str, Any]],
               converted: dict[int, int], now: int, extras: Sequence[Extra] = ()) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise Transient(str(exc)) from exc
        try:
            added: dict[int, int] = {}
            if extras:  # under the write lock already (BEGIN IMMEDIATE): what is free now is ours to take
                ids = extra_pots(extras)
                free = dict(conn.execute(_FREE.format(",".join("?" * len(ids))), ids).fetchall())
                entries, charges, added = plan_extras(extras, free, entries, charges)
            if entries:
                conn.executemany(_INSERT_ENTRY, map(_entry_row, entries))
            if charges:
                conn.executemany(_INSERT_CHARGE, map(_charge_row, charges))
            for pot_id in sorted({*converted, *added}):  # lock order: pots by id, then lease rows
                amount = converted.get(pot_id, 0)
                conn.execute(_UPDATE_POT, (amount + added.get(pot_id, 0), amount, pot_id))
            ids = sorted(converted)
            for pot_id in ids:
                amount = converted[pot_id]
                if conn.execute(_UPDATE_LEASE, (amount, now, owner, pot_id, amount)).rowcount != 1:
                    raise LeaseLost(pot_id)
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.IntegrityError):
                raise Conflict(str(exc)) from exc
            if isinstance(exc, sqlite3.Error):
                raise Transient(str(exc)) from exc
            raise

    async def write(self, owner: str, entries: Sequence[dict[str, Any]], charges: Sequence[dict[str, Any]],
                    converted: dict[int, int], now: int, extras: Sequence[Extra] = ()) -> None:
        self._write(owner, entries, charges, converted, now, extras)

    write_now = _write  # the synchronous form, for a caller already on the loop with nothing to batch

    def _checkpoint(self) -> None:
        conn = sqlite3.connect(self.path, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    async def checkpoint(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._checkpoint)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pool.shutdown(wait=True)


def writer_for(url: str, sessions: Any) -> Writer:
    return SqliteWriter.for_url(url) or SessionWriter(sessions)

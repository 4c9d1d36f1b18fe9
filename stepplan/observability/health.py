"""Readiness checks, shared by ``GET /readyz`` and ``stepplan doctor``.

Each check returns a :class:`Check`; a gateway is ready when every check passes:

* ``database``: a ``SELECT 1`` answers within 2 s;
* ``migrations``: the database is at the newest schema revision shipped with this version;
* ``writer``: the ledger writer task (group commit) is running and its queue is moving;
* ``router``: the ``step-router-v1`` weights are loaded (when a public model routes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

WRITER_STALL_SECONDS = 30.0


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ..store.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    return head or ""


async def check_database(sessions: Any, timeout: float = 2.0) -> tuple[Check, Check]:
    """(database reachable, migrations current)."""
    try:
        async with asyncio.timeout(timeout), sessions() as s:
            await s.execute(text("SELECT 1"))
            try:
                rows = (await s.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            except Exception:  # no alembic_version table: never migrated
                await s.rollback()
                rows = []
    except TimeoutError:
        err = Check("database", False, f"no answer within {timeout:g}s")
        return err, Check("migrations", False, "database unreachable")
    except Exception as exc:
        err = Check("database", False, f"{type(exc).__name__}: {str(exc)[:200]}")
        return err, Check("migrations", False, "database unreachable")
    db = Check("database", True, "reachable")
    head = head_revision()
    current = sorted(str(r) for r in rows)
    if current == [head]:
        return db, Check("migrations", True, f"at {head}")
    shown = ", ".join(current) or "none"
    return db, Check("migrations", False, f"database at {shown}, this version needs {head}: run stepplan serve "
                                          "(it migrates) or upgrade the other gateways")


def check_writer(meter: Any) -> Check:
    health = getattr(meter, "writer_health", None)
    if health is None:
        return Check("writer", True, "metering off: no ledger writer")
    ok, detail = health(WRITER_STALL_SECONDS)
    return Check("writer", ok, detail)


def check_router(router: Any) -> Check:
    if not any(m.kind == "router" for m in router.catalog.public()):
        return Check("router", True, "no routed model")
    if router.loaded:
        return Check("router", True, "weights loaded")
    return Check("router", False, "step-router-v1 weights are not loaded")


async def readiness(sessions: Any, meter: Any, router: Any) -> list[Check]:
    db, migrations = await check_database(sessions)
    return [db, migrations, check_writer(meter), check_router(router)]


__all__ = ["Check", "check_database", "check_router", "check_writer", "readiness"]

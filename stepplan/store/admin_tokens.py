"""Admin API tokens: several, each with a scope (``read``: GET endpoints; ``write``: everything),
stored as SHA-256 digests (the tokens are 256-bit random, so a fast hash is enough) and shown
once at creation. ``STEPPLAN_ADMIN_TOKEN`` / ``[server] admin_token`` keeps working beside them
as a write token named ``env``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .models import AdminToken
from .sql import rowcount

SCOPES = ("read", "write")
TOKEN_PREFIX = "sp-admin-"
ENV_NAME = "env"  # the name STEPPLAN_ADMIN_TOKEN goes by (audit actors, console sessions)


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """Who an accepted admin token is: its name, scope, and row id (None for the env token)."""

    name: str
    scope: str
    token_id: int | None

    @property
    def can_write(self) -> bool:
        return self.scope == "write"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_view(t: AdminToken) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "scope": t.scope, "prefix": t.prefix, "created_at": t.created_at,
            "revoked_at": t.revoked_at}


async def create_token(s: AsyncSession, name: str, scope: str) -> tuple[AdminToken, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be read or write, not {scope!r}")
    if not name.strip():
        raise ValueError("an admin token needs a name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AdminToken(name=name.strip()[:128], scope=scope, prefix=token[:15], hash=hash_token(token),
                     created_at=int(time.time()))
    s.add(row)
    await s.flush()
    return row, token


async def list_tokens(s: AsyncSession) -> list[AdminToken]:
    return list((await s.execute(select(AdminToken).order_by(AdminToken.id))).scalars())


async def revoke_token(s: AsyncSession, token_id: int) -> AdminToken | None:
    res = await s.execute(update(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
                          .values(revoked_at=int(time.time())))
    if not rowcount(res):
        return None
    return await s.get(AdminToken, token_id)


async def any_tokens(s: AsyncSession) -> bool:
    """Whether any admin token exists (revoked ones count: the API stays on, refusing them)."""
    return bool((await s.execute(select(exists().where(AdminToken.id.is_not(None))))).scalar())


async def lookup_token(s: AsyncSession, token: str) -> AdminToken | None:
    """The active token row of ``token``, or None. The token is hashed first and the digests are
    compared in constant time."""
    h = hash_token(token)
    row = (await s.execute(select(AdminToken).where(AdminToken.hash == h, AdminToken.revoked_at.is_(None))
                           )).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.hash.encode(), h.encode()):
        return None
    return row


async def verify_admin_token(sessions: async_sessionmaker, env_token: str | None, given: str | None
                             ) -> AdminIdentity | None:
    """Whether ``given`` is an admin token this gateway accepts, and whose: ``env_token``
    (``STEPPLAN_ADMIN_TOKEN``, a write token named ``env``, compared in constant time, no database
    read) or an active token of ``admin_tokens``. The one check behind the admin API and the
    console's operator sign-in."""
    if not given:
        return None
    if env_token and hmac.compare_digest(given.encode(), env_token.encode()):
        return AdminIdentity(ENV_NAME, "write", None)
    async with sessions() as s:
        row = await lookup_token(s, given)
    return None if row is None else AdminIdentity(row.name, row.scope, row.id)


async def active_token(s: AsyncSession, token_id: int) -> AdminToken | None:
    """The token row ``token_id`` while it is not revoked (a console session's re-check)."""
    return (await s.execute(select(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
                            )).scalar_one_or_none()

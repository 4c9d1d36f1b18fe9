"""The ``meta`` table: process-wide facts kept in the database so that every replica agrees on
them (the signing secret, and the epochs that tell every process to reload its caches)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .models import Meta
from .sql import table, upsert

SECRET_KEY = "signing_secret"
AUTH_EPOCH = "auth_epoch"
BILLING_EPOCH = "billing_epoch"


async def signing_secret(sessions: async_sessionmaker) -> bytes:
    """The HMAC secret for thinking signatures: made once, shared by all processes."""
    async with sessions() as s:
        row = await s.get(Meta, SECRET_KEY)
        if row is not None:
            return bytes.fromhex(row.value)
        s.add(Meta(key=SECRET_KEY, value=secrets.token_hex(32)))
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()  # another process won the race; use its secret
    async with sessions() as s:
        row = await s.get(Meta, SECRET_KEY)
        assert row is not None
        return bytes.fromhex(row.value)


async def bump_auth_epoch(s: AsyncSession) -> None:
    """Keys changed: every process drops its key cache."""
    row = await s.get(Meta, AUTH_EPOCH)
    if row is None:
        s.add(Meta(key=AUTH_EPOCH, value="1"))
    else:
        row.value = str(int(row.value) + 1)


async def read_auth_epoch(s: AsyncSession) -> str:
    row = await s.get(Meta, AUTH_EPOCH)
    return row.value if row else "0"


async def bump_billing_epoch(s: AsyncSession) -> None:
    """An account's billing state changed: every process reloads accounts before their next reservation."""
    token = uuid.uuid4().hex
    await s.execute(upsert(s, table(Meta), {"key": BILLING_EPOCH, "value": token}, ["key"], {"value": token}))


async def read_billing_epoch(s: AsyncSession) -> str:
    row = (await s.execute(select(Meta.value).where(Meta.key == BILLING_EPOCH))).scalar_one_or_none()
    return row or ""

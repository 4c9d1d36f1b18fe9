"""Process-wide facts kept in the database so that every replica agrees on them."""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from .models import Meta

SECRET_KEY = "signing_secret"


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

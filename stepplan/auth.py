"""API key authentication with a cache that revocation clears at once.

Keys are high-entropy secrets, so a SHA-256 lookup is enough (no slow password hash).
Nothing ever compares the secret itself: it is hashed first and looked up by digest, so
timing can reveal at most something about a digest, which does not help forge a key.
Results are cached per process. Every key creation or revocation bumps an
``auth_epoch`` row; each process polls it (every ``poll_interval`` seconds) and drops
its cache when it changes, so a revoked key stops working everywhere without restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import async_sessionmaker

from .errors import AuthError
from .store.accounts import KeyInfo, hash_key, lookup_key, read_auth_epoch

log = logging.getLogger("stepplan.auth")

NEGATIVE_TTL = 2.0
MAX_CACHE = 100_000


class Authenticator:
    def __init__(self, sessions: async_sessionmaker, poll_interval: float = 0.25):
        self.sessions = sessions
        self.poll_interval = poll_interval
        self._cache: dict[str, KeyInfo | float] = {}  # hash → info, or expiry time of a negative entry
        self._epoch: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self.sessions() as s:
            self._epoch = await read_auth_epoch(s)
        self._task = asyncio.create_task(self._poll(), name="auth-epoch-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # a database hiccup must not kill the poller
                log.exception("auth epoch poll failed")

    async def refresh(self) -> None:
        async with self.sessions() as s:
            epoch = await read_auth_epoch(s)
        if epoch != self._epoch:
            self._epoch = epoch
            self._cache.clear()

    def invalidate(self) -> None:
        self._cache.clear()

    async def authenticate(self, key: str | None) -> KeyInfo:
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        h = hash_key(key)
        hit = self._cache.get(h)
        if isinstance(hit, KeyInfo):
            return hit
        if hit is not None and hit > time.monotonic():
            raise AuthError("invalid_api_key: the API key is not valid or has been revoked")
        async with self.sessions() as s:
            info = await lookup_key(s, h)
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        if info is None:
            self._cache[h] = time.monotonic() + NEGATIVE_TTL
            raise AuthError("invalid_api_key: the API key is not valid or has been revoked")
        self._cache[h] = info
        return info


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None

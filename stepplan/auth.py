"""API key authentication with a cache that revocation clears at once.

Keys are high-entropy secrets, so a SHA-256 lookup is enough (no slow password hash).
Nothing ever compares the secret itself: it is hashed first and looked up by digest, so
timing can reveal at most something about a digest, which does not help forge a key.
Results are cached per process. Every key creation or revocation bumps an
``auth_epoch`` row; each process polls it (every ``poll_interval`` seconds) and drops
its cache when it changes, so a revoked key stops working everywhere without restart. With
Redis, changes are also announced over pub/sub and every process drops its cache at once
(:mod:`stepplan.revocation`); the poll remains the fallback.

The cached :class:`KeyInfo` carries the key's own settings, so expiry (and a rotated key's grace),
the client-address allowlist and the model allowlist are checked from memory. A key's last use
is noted in a dict and written in one batch every ``LAST_USED_EVERY`` seconds, never per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.ext.asyncio import async_sessionmaker

from .billing.clock import Clock, iso
from .errors import AuthError
from .revocation import Listener, announce
from .store.accounts import KeyInfo, Network, hash_key, lookup_key, read_auth_epoch
from .store.keys import record_last_used

log = logging.getLogger("stepplan.auth")

NEGATIVE_TTL = 2.0
MAX_CACHE = 100_000
LAST_USED_EVERY = 5.0  # seconds between batched writes of keys' last-use times


class Authenticator:
    def __init__(self, sessions: async_sessionmaker, poll_interval: float = 0.25, clock: Clock | None = None,
                 trusted_proxies: Sequence[str] = (), redis_url: str | None = None):
        self.sessions = sessions
        self.redis_url = redis_url
        self.listener = Listener(redis_url, self.invalidate) if redis_url else None
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.poll_interval = poll_interval
        self.clock = clock or Clock()
        self._cache: dict[str, KeyInfo | float] = {}  # hash → info, or expiry time of a negative entry
        self._epoch: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._used: dict[int, int] = {}  # key id → last use (billing clock), not yet written
        # (key id, client address) → allowed by the key's IP allowlist; and address → trusted proxy.
        # Parsing addresses costs ~20 µs per call; clients repeat, so the answers are remembered.
        self._allowed: dict[tuple[int, str | None], bool] = {}
        self._trusted_peer: dict[str | None, bool] = {}
        self._used_written = time.monotonic()

    async def start(self) -> None:
        async with self.sessions() as s:
            self._epoch = await read_auth_epoch(s)
        self._task = asyncio.create_task(self._poll(), name="auth-epoch-poll")
        if self.listener is not None:
            self.listener.start()

    async def announce(self) -> None:
        """Keys changed here (and committed): drop this cache, and tell every process over Redis."""
        self.invalidate()
        await announce(self.redis_url)

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.write_last_used()
        except Exception:
            log.exception("could not write keys' last-use times at shut-down")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
                if self._used and time.monotonic() - self._used_written >= LAST_USED_EVERY:
                    await self.write_last_used()
            except Exception:  # a database hiccup must not kill the poller
                log.exception("auth epoch poll failed")

    def unwritten_uses(self) -> Mapping[int, int]:
        """Key id → last use noted by this process and not yet written to ``api_keys.last_used_at``
        (written every ``LAST_USED_EVERY`` seconds)."""
        return self._used

    async def write_last_used(self) -> None:
        """Write the last-use times noted since the last write (one statement for all keys)."""
        self._used_written = time.monotonic()
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            async with self.sessions() as s:
                await record_last_used(s, used)
                await s.commit()
        except BaseException:
            for k, t in used.items():  # keep them for the next attempt
                self._used[k] = max(t, self._used.get(k, 0))
            raise

    async def refresh(self) -> None:
        async with self.sessions() as s:
            epoch = await read_auth_epoch(s)
        if epoch != self._epoch:
            self._epoch = epoch
            self._cache.clear()

    def invalidate(self) -> None:
        self._cache.clear()
        self._allowed.clear()

    async def authenticate(self, key: str | None, client: Callable[[], str | None] | None = None) -> KeyInfo:
        """The key's info, or :class:`AuthError`: unknown, revoked, expired (a rotated key: its grace
        ended), or used from an address outside its allowlist (``client()`` gives the address; it is
        only asked for keys that have an allowlist)."""
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        h = hash_key(key)
        hit = self._cache.get(h)
        if isinstance(hit, KeyInfo):
            info = hit
        elif hit is not None and hit > time.monotonic():
            raise AuthError("invalid_api_key: the API key is not valid or has been revoked")
        else:
            async with self.sessions() as s:
                found = await lookup_key(s, h)
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            if found is None:
                self._cache[h] = time.monotonic() + NEGATIVE_TTL
                raise AuthError("invalid_api_key: the API key is not valid or has been revoked")
            self._cache[h] = info = found
        now = self.clock.now()
        if info.expires_at is not None and now >= info.expires_at:
            if info.replaced_by is not None:
                raise AuthError(f"invalid_api_key: this API key was rotated and its grace period ended at "
                                f"{iso(info.expires_at)}; use the key that replaced it")
            raise AuthError(f"invalid_api_key: this API key expired at {iso(info.expires_at)}; "
                            "ask the administrator for a new key")
        if info.networks is not None:
            address = client() if client is not None else None
            allowed = self._allowed.get((info.key_id, address))
            if allowed is None:
                if len(self._allowed) >= MAX_CACHE:
                    self._allowed.clear()
                allowed = self._allowed[(info.key_id, address)] = address_allowed(address, info.networks)
            if not allowed:
                raise AuthError(f"invalid_api_key: this API key may not be used from this client address "
                                f"({address or 'unknown'}); it is limited to the networks its administrator set")
        self._used[info.key_id] = now
        return info

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address (see :func:`client_address`) under ``[server] trusted_proxies``."""
        if not self.trusted or not forwarded_for:
            return peer
        trusted = self._trusted_peer.get(peer)
        if trusted is None:
            if len(self._trusted_peer) >= MAX_CACHE:
                self._trusted_peer.clear()
            trusted = self._trusted_peer[peer] = address_allowed(peer, self.trusted)
        return client_address(peer, forwarded_for, self.trusted) if trusted else peer


def address_allowed(address: str | None, networks: Sequence[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """The client's address: the connection's peer, unless the peer is a trusted proxy; then the
    ``X-Forwarded-For`` entries from right to left, skipping trusted hops: the first untrusted one
    (an entry that is not an address ends the walk: it is taken as the client, and no network holds it)."""
    if not trusted or not forwarded_for or not address_allowed(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not address_allowed(hop, trusted):
            return hop
    return hops[0] if hops else peer


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None

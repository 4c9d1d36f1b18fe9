"""Immediate key revocation over Redis pub/sub, when Redis is configured.

Without Redis, a key change (revocation, rotation, new limits) reaches the other gateway processes
when they next poll the ``auth_epoch`` row: within ``Authenticator.poll_interval`` (0.25 s) plus a
database round trip, typically 0.15-0.25 s. With Redis, whoever changes a key (the admin API or
the CLI) also publishes on :data:`CHANNEL` after the change commits; every process's
:class:`~stepplan.auth.Authenticator` listens and drops its key cache at once (about a
millisecond on one host). The epoch poll stays as the fallback: a message lost while a process
was disconnected from Redis is made up for by the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stepplan.auth")

CHANNEL = "stepplan:auth:changed"


async def announce(redis_url: str | None) -> None:
    """Tell every process that keys changed (after the change committed). Best effort: on failure
    the epoch poll still carries the change."""
    if not redis_url:
        return
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.publish(CHANNEL, b"1")
    except Exception as exc:  # Redis down: the epoch poll still carries the change
        log.warning("could not publish a key change on Redis (%s); other processes see it at their next poll",
                    type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def announce_now(redis_url: str | None) -> None:
    """:func:`announce` from synchronous code (the CLI)."""
    if redis_url:
        asyncio.run(announce(redis_url))


class Listener:
    """Calls ``on_change`` for every message on :data:`CHANNEL`, reconnecting after errors."""

    def __init__(self, redis_url: str, on_change: Callable[[], None]):
        self.redis_url = redis_url
        self.on_change = on_change
        self.ready = asyncio.Event()  # set once subscribed (tests wait for it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="auth-revocation-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        delay = 0.1
        while True:
            client: Any = aioredis.from_url(self.redis_url, socket_connect_timeout=2)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)
                self.ready.set()
                self.on_change()  # anything announced while we were not listening
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                log.warning("Redis revocation channel lost (%s); retrying in %.1fs (the epoch poll covers the gap)",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

"""``api.common.until_disconnect`` in process: the client leaving cancels the work and becomes
``ClientClosed``, whether the connection reports it (stepplan's own server protocol) or the ASGI
``receive`` does (any other server); otherwise the work's result or error passes through."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import pytest
from starlette.requests import Request

from stepplan.api.common import until_disconnect
from stepplan.api.responses import CONNECTION
from stepplan.errors import ClientClosed
from stepplan.http_guard import Watch


class Connection:
    """What ``http_guard.GuardedHttpToolsProtocol`` offers a handler: watch, unwatch, and losing it."""

    def __init__(self) -> None:
        self.watching: Watch | None = None

    def watch(self, task: asyncio.Task[Any]) -> Watch:
        self.watching = Watch(task)
        return self.watching

    def unwatch(self, w: Watch) -> None:
        if self.watching is w:
            self.watching = None

    def lose(self) -> None:
        w, self.watching = self.watching, None
        if w is not None:
            w.gone = True
            w.task.cancel()


def request(conn: Connection | None, receive: Any = None) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": []}
    if conn is not None:
        scope[CONNECTION] = weakref.ref(conn)

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    return Request(scope, receive or never)


async def slow(cancelled: list[bool]) -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
    return "late"


async def test_a_lost_connection_cancels_the_work_and_is_client_closed() -> None:
    conn, cancelled = Connection(), []
    task = asyncio.ensure_future(until_disconnect(request(conn), slow(cancelled)))
    await asyncio.sleep(0)
    assert conn.watching is not None, "the handler's task is watched while the work runs"
    conn.lose()
    with pytest.raises(ClientClosed):
        await task
    assert cancelled == [True]
    assert task.cancelling() == 0, "our own cancellation is taken back"


async def test_with_the_client_still_there_the_result_passes_and_the_watch_ends() -> None:
    conn = Connection()

    async def quick() -> str:
        return "answer"

    assert await until_disconnect(request(conn), quick()) == "answer"
    assert conn.watching is None


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    conn, cancelled = Connection(), []
    task = asyncio.ensure_future(until_disconnect(request(conn), slow(cancelled)))
    await asyncio.sleep(0)
    task.cancel()  # e.g. the server shutting down: not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.watching is None


async def test_under_another_server_the_asgi_disconnect_message_does_the_same() -> None:
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    cancelled: list[bool] = []
    task = asyncio.ensure_future(until_disconnect(request(None, receive), slow(cancelled)))
    await asyncio.sleep(0)
    gone.set()
    with pytest.raises(ClientClosed):
        await task
    assert cancelled == [True]

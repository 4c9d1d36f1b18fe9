"""``api.common.until_disconnect`` in process, over stepplan's own server protocol
(``http_guard.GuardedHttpToolsProtocol`` fed bytes through a stand-in transport) and over a plain
ASGI ``receive``: the client leaving cancels the work and becomes ``ClientClosed``; a cancellation
from elsewhere stays a cancellation; with the client still there the result passes through."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request
from uvicorn.server import ServerState

from stepplan.api.common import until_disconnect
from stepplan.errors import ClientClosed
from stepplan.http_guard import GuardedHttpToolsProtocol

REQUEST = b"POST /step_plan/v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def slow(cancelled: list[bool]) -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
    return "late"


Handler = Callable[[Request], Awaitable[Any]]


async def serve(handler: Handler) -> tuple[GuardedHttpToolsProtocol, asyncio.Future[Any]]:
    """One request through the guarded protocol; the future holds what ``handler`` returned or raised."""
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        await request.body()
        try:
            outcome.set_result(await handler(request))
        except BaseException as exc:
            outcome.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    config = uvicorn.Config(app, log_level="critical")
    config.load()
    protocol = GuardedHttpToolsProtocol(config, ServerState(), {})
    protocol.connection_made(Transport())
    protocol.data_received(REQUEST)
    for _ in range(5):
        await asyncio.sleep(0)
    return protocol, outcome


async def test_a_lost_connection_cancels_the_work_and_is_client_closed() -> None:
    cancelled: list[bool] = []
    protocol, outcome = await serve(lambda request: until_disconnect(request, slow(cancelled)))
    assert protocol._watch is not None, "the connection watches the handler (no watcher task)"
    protocol.connection_lost(None)
    with pytest.raises(ClientClosed):
        await outcome
    assert cancelled == [True]


async def test_nested_waits_each_learn_the_client_left() -> None:
    cancelled: list[bool] = []

    async def handler(request: Request) -> Any:
        async def inner() -> str:
            return await until_disconnect(request, slow(cancelled))

        return await until_disconnect(request, inner())

    protocol, outcome = await serve(handler)
    protocol.connection_lost(None)
    with pytest.raises(ClientClosed):
        await outcome
    assert cancelled == [True]


async def test_with_the_client_still_there_the_result_passes_through() -> None:
    async def quick() -> str:
        return "answer"

    protocol, outcome = await serve(lambda request: until_disconnect(request, quick()))
    assert await outcome == "answer"
    assert protocol._watch is None, "the watch ends with the wait"


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    cancelled: list[bool] = []
    inner: list[asyncio.Task[Any]] = []

    async def handler(request: Request) -> Any:
        inner.append(asyncio.ensure_future(until_disconnect(request, slow(cancelled))))
        return await inner[0]

    protocol, outcome = await serve(handler)
    inner[0].cancel()  # e.g. the server shutting down: not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await outcome
    protocol.connection_lost(None)


async def test_under_another_server_the_asgi_disconnect_message_does_the_same() -> None:
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
    cancelled: list[bool] = []
    task = asyncio.ensure_future(until_disconnect(request, slow(cancelled)))
    await asyncio.sleep(0)
    gone.set()
    with pytest.raises(ClientClosed):
        await task
    assert cancelled == [True]

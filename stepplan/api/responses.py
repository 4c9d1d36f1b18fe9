"""Response classes tuned for the gateway's hot path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

# Scope key: a weak reference to the request's connection when the server is stepplan's own
# protocol (``http_guard``), which can watch a handler for its client leaving without a task.
CONNECTION = "stepplan.connection"


def watch_connection(scope: Scope, task: asyncio.Task[Any] | None) -> tuple[Any, Any]:
    """``(connection, watch)`` when the connection itself will cancel ``task`` if the client leaves
    (end it with ``connection.unwatch(watch)``); ``(None, None)`` otherwise: then watch the ASGI
    ``receive`` for ``http.disconnect``."""
    ref = scope.get(CONNECTION)
    conn = ref() if ref is not None and task is not None else None
    w = conn.watch(task) if conn is not None else None
    return (conn, w) if w is not None else (None, None)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class SSEResponse(Response):
    """Streams an async iterator of bytes as ``text/event-stream``.

    Unlike a plain streaming response it (1) notices a client that goes away even while
    the upstream is silent, cancelling the stream, and (2) always closes the iterator,
    so the pipeline's clean-up (upstream cancellation, settlement) runs at once instead
    of whenever the garbage collector finalises the generator.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], status_code: int = 200,
                 headers: Mapping[str, str] | None = None):
        self.body_iterator = body
        self.status_code = status_code
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        conn, w = watch_connection(scope, task)
        if w is not None:  # stepplan's own server: the connection cancels the task when it is lost
            try:
                await self._send_all(send)
            except (asyncio.CancelledError, OSError):
                if not w.gone:
                    raise
                task.uncancel()  # type: ignore[union-attr]
            finally:
                conn.unwatch(w)
                with contextlib.suppress(BaseException):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
            return
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    if task is not None:
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self._send_all(send)
        except (asyncio.CancelledError, OSError):
            if not disconnected:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

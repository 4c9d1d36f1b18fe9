"""Response classes tuned for the gateway's hot path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


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
        it = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in it:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (asyncio.CancelledError, OSError):
            if not disconnected:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await it.aclose()  # type: ignore[attr-defined]

"""A recording reverse proxy between an agent CLI and the gateway.

The fake upstream shows what the gateway forwarded; this shows what the agent itself sent
(path, headers, body) and what the gateway answered (status, headers, and the body of an
error), so a failing test can name the request an agent choked on. Responses are streamed
through chunk by chunk, so SSE timing is the gateway's own.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.fakes.upstream import free_port

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding",
       "content-encoding", "upgrade", "proxy-connection"}
ERROR_BODY_LIMIT = 16_384


@dataclass
class Exchange:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: Any  # parsed JSON, or text
    status: int = 0  # 0: the gateway never answered
    response_headers: dict[str, str] = field(default_factory=dict)
    error_body: str = ""  # the response body when status >= 400

    def summary(self, limit: int = 1500) -> str:
        body = self.body if isinstance(self.body, str) else orjson.dumps(self.body).decode()
        line = f"{self.method} {self.path} → {self.status or 'no answer'}"
        if self.error_body:
            line += f" {self.error_body[:600]}"
        return f"{line}\n  request body: {_cut(body, limit)}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


class Ingress:
    """``Ingress(target).start()``; point the agent at :attr:`url` instead of the gateway."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.exchanges: list[Exchange] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self, suffix: str = "") -> list[Exchange]:
        return [x for x in self.exchanges if x.method == "POST" and x.path.split("?")[0].endswith(suffix)]

    def start(self) -> Ingress:
        threading.Thread(target=self._run, daemon=True, name=f"ingress-{self.port}").start()
        if not self._ready.wait(10):
            raise RuntimeError("the ingress proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)

        async def setup() -> None:
            assert self._runner is not None
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
                                                  auto_decompress=False)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(setup())
        self._ready.set()
        self._loop.run_forever()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        x = Exchange(request.method, request.path_qs, dict(request.headers), body)
        self.exchanges.append(x)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        try:
            async with self._session.request(request.method, self.target + request.path_qs, headers=headers,
                                             data=raw or None, allow_redirects=False) as up:
                x.status = up.status
                x.response_headers = dict(up.headers)
                out = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                    if k.lower() not in HOP})
                await out.prepare(request)
                kept = bytearray()
                async for chunk in up.content.iter_any():
                    if up.status >= 400 and len(kept) < ERROR_BODY_LIMIT:
                        kept += chunk
                    await out.write(chunk)
                x.error_body = kept.decode(errors="replace")
                await out.write_eof()
                return out
        except aiohttp.ClientError as exc:
            x.error_body = f"ingress could not reach the gateway: {exc!r}"
            return web.Response(status=502, text=x.error_body)

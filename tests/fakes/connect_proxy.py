"""A tiny HTTP proxy on 127.0.0.1 for the outbound-proxy tests: ``CONNECT host:port`` tunnels
(for https targets) and absolute-form requests (``POST http://host:port/path``, for http
targets), with optional Basic authentication and a mode that refuses everything.

It runs its own event loop in a thread (so a gateway process can use it too) and records what
it saw: every request line (``lines``), the ``Proxy-Authorization`` values (``auths``) and how
many client connections it accepted (``connections``: keep-alive reuse shows as fewer).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from urllib.parse import urlsplit

from tests.fakes.upstream import free_port


class ConnectProxy:
    def __init__(self, user: str | None = None, password: str | None = None, refuse: int | None = None) -> None:
        self.port = free_port()
        self.expected = None if user is None else "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.refuse = refuse  # answer every request with this status (403, ...)
        self.lines: list[str] = []
        self.auths: list[str | None] = []
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        creds = f"{user}:{password}@" if user is not None else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        threading.Thread(target=self._run, daemon=True, name="connect-proxy").start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._server is not None:
            loop.call_soon_threadsafe(self._server.close)
            loop.call_soon_threadsafe(loop.stop)

    def _run(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        self.lines.append(lines[0])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        self.auths.append(headers.get("proxy-authorization"))
        method, target, _ = lines[0].split(" ", 2)
        if self.refuse is not None:
            await self._answer(writer, self.refuse, "Forbidden")
            return
        if self.expected is not None and headers.get("proxy-authorization") != self.expected:
            await self._answer(writer, 407, "Proxy Authentication Required",
                               b'Proxy-Authenticate: Basic realm="test"\r\n')
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                await self._answer(writer, 502, "Bad Gateway")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._pipe(reader, writer, up_reader, up_writer)
            return
        url = urlsplit(target)  # absolute form: forward to the origin, origin-form, without our header
        try:
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        except OSError:
            await self._answer(writer, 502, "Bad Gateway")
            return
        path = url.path + (f"?{url.query}" if url.query else "")
        kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith("proxy-authorization:")]
        up_writer.write(f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + "\r\n".join(kept).encode("latin-1")
                        + b"\r\n\r\n")
        await self._pipe(reader, writer, up_reader, up_writer)  # later requests on it go to the same origin

    async def _answer(self, writer: asyncio.StreamWriter, status: int, reason: str, extra: bytes = b"") -> None:
        writer.write(f"HTTP/1.1 {status} {reason}\r\n".encode() + extra
                     + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _pipe(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter,
                    ur: asyncio.StreamReader, uw: asyncio.StreamWriter) -> None:
        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(copy(cr, uw), copy(ur, cw))

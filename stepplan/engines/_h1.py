"""A small HTTP/1.1 client for upstream model calls: pooled keep-alive connections over
asyncio protocols, responses parsed by ``httptools`` (llhttp), bodies delivered as they arrive.

Why not a general client: an open stream holds one upstream connection for minutes, and a
gateway holds thousands of them. This client keeps per-connection state to one protocol
object and one parser (a general client keeps a request object, a response object, two
stream readers and their queues, URL objects and header multidicts per call), and it reads
without a task or a timeout object per chunk. Measurements are in ``docs/performance.md``.

It does what upstream calls need and no more: ``POST``/``GET`` with a bytes body, TLS,
``Content-Length``, chunked and close-delimited responses, gzip/deflate bodies, connect and
idle timeouts, and pause/resume reading when the consumer falls behind.

:class:`ConnectionPool` is the production :class:`~stepplan.engines.transport.Transport`:
``handle_request`` sends once and raises :class:`StaleConnection` when a reused connection turns
out to have been closed by the server before answering; the caller (``_http.py``) decides whether
to resend, counting it against its retry budget.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import AsyncGenerator
from urllib.parse import urlsplit

import httptools

from .transport import (
    ConnectError,
    HTTPError,
    ReadTimeout,
    RemoteProtocolError,
    StaleConnection,
    UpstreamRequest,
    render_headers,
)

__all__ = ["ConnectError", "ConnectionPool", "HTTPError", "ReadTimeout", "RemoteProtocolError", "Response",
           "StaleConnection", "parse_base_url", "render_headers"]

HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the socket pauses
KEEPALIVE_S = 30.0  # an idle pooled connection older than this is closed, not reused


class _Stale(StaleConnection):
    """A pooled connection was closed before any byte of the answer: safe to resend."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    __slots__ = ("_body", "_buffered", "_complete", "_decoder", "_error", "_headers", "_headers_done", "_keep_alive",
                 "_loop", "_parser", "_paused", "_pool", "_waiter", "closed", "counted", "got_bytes", "headers",
                 "idle_since", "status", "transport")

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop):
        self._pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = True  # holds one of the pool's connection slots
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._decoder: zlib._Decompress | None = None
        self.got_bytes = False

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        self._on_eof()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        self._on_eof()

    def _on_eof(self) -> None:
        self.closed = True
        if self._complete or self._error is not None:
            return
        if self._headers_done and "content-length" not in self.headers \
                and "chunked" not in self.headers.get("transfer-encoding", ""):
            self._complete = True  # a close-delimited body ends here
        elif not self.got_bytes:
            self._fail(_Stale("the upstream closed the connection before answering"))
        else:
            self._fail(RemoteProtocolError("the upstream closed the connection mid-response"))
        self._wake()

    # ------------------------------------------------------------ parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        headers = self.headers
        for name, value in self._headers:
            k = name.decode("latin-1").lower()
            v = value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self._headers = []
        enc = headers.get("content-encoding", "").strip().lower()
        if enc in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._decoder = zlib.decompressobj()
        elif enc not in ("", "identity"):
            self._fail(RemoteProtocolError(f"unsupported content-encoding {enc!r}"))
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self._fail(RemoteProtocolError(f"corrupt compressed body: {exc}"))
                return
            if not body:
                return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._body.append(tail)
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is done
        self._complete = True
        self._wake()

    # ------------------------------------------------------------ waiting
    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_timeout(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(ReadTimeout("the upstream went idle"))

    async def _wait(self, timeout: float | None) -> None:
        self._waiter = w = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._on_timeout) if timeout else None
        try:
            await w
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    # ------------------------------------------------------------ one exchange
    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        t = self.transport
        if t is None or t.is_closing():
            raise _Stale("the connection closed before the request was sent")
        try:
            if len(body) < 65536:
                t.write(head + body)
            else:
                t.write(head)
                t.write(body)
        except (OSError, RuntimeError) as exc:  # the socket went away between checks
            raise _Stale(f"the connection closed before the request was sent: {exc}") from exc

    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait(None)  # the caller bounds the wait for the first byte
        if self._error is not None:
            raise self._error

    async def next_chunk(self, idle_timeout: float | None) -> bytes | None:
        """The body bytes received since the last call, or None at the end of the body."""
        while True:
            if self._body:
                data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait(idle_timeout)

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and self._error is None and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An upstream answer whose headers have arrived; read the body once, then it is released."""

    __slots__ = ("_conn", "_idle", "headers", "status")

    def __init__(self, conn: Connection, idle_timeout: float | None):
        self._conn: Connection | None = conn
        self._idle = idle_timeout
        self.status = conn.status
        self.headers = conn.headers

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive; the connection goes back to the pool at the end."""
        conn = self._conn
        if conn is None:
            return
        ok = False
        try:
            while (data := await conn.next_chunk(self._idle)) is not None:
                yield data
            ok = True
        finally:
            self._finish(ok)

    async def read(self) -> bytes:
        parts = [data async for data in self.chunks()]
        return b"".join(parts)

    def read_now(self) -> bytes | None:
        conn = self._conn
        if conn is None or not conn._complete or conn._error is not None:
            return None
        body = conn._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        conn._buffered = 0
        if conn._paused and conn.transport is not None:
            conn._paused = False
            conn.transport.resume_reading()
        self._finish(True)
        return data

    def _finish(self, ok: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.reusable:  # read to the end, or closed early after the parser saw the end (OpenAI's
            conn._pool._give_back(conn)  # [DONE], then the body's last chunk): the connection is clean
        else:
            conn.close()
            conn._pool._forget(conn)

    def close(self) -> None:
        """Drop the answer (and its connection) without reading the rest."""
        self._finish(False)


def parse_base_url(base_url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path prefix)`` of an upstream's base URL; ValueError if unusable."""
    url = urlsplit(base_url)
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1 or url.query or url.fragment:
        raise ValueError(f"base_url must be an http(s) URL such as https://api.example.com/v1, not {base_url!r}")
    return url.scheme, url.hostname, port or (443 if url.scheme == "https" else 80), url.path.rstrip("/")


def default_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Certificate-verifying TLS with the system's CA store; the ``certifi`` bundle when the
    system has none (slim containers) and certifi is installed. With ``ca_file``, only the
    certificates in that PEM file are trusted (a private CA, or a self-signed test upstream)."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.create_default_context()
    if not ctx.cert_store_stats().get("x509_ca"):
        try:
            import certifi
        except ImportError:
            return ctx
        ctx.load_verify_locations(certifi.where())
    return ctx


class ConnectionPool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, base_url: str, *, max_connections: int = 10_000, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, user_agent: str = "stepplan"):
        self.scheme, self.host, self.port, self.prefix = parse_base_url(base_url)
        https = self.scheme == "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == (443 if https else 80) else f"{host}:{self.port}"
        self._ssl = (ssl_context or default_ssl_context()) if https else None
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        # The request line's target before the request's path, and the fixed header lines after it
        # (a proxied pool, engines/_proxy.py, puts an absolute URL and Proxy-Authorization here).
        self._target = self.prefix
        self._fixed = f"Host: {self.host_header}\r\nUser-Agent: {user_agent}\r\n"
        self.where = f"{self.host}:{self.port}"  # named in connect errors
        self._idle: dict[Connection, None] = {}  # insertion order: the newest is reused first
        self._count = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def handle_request(self, request: UpstreamRequest) -> Response:
        """The transport method: send ``request`` once and wait for the response headers (the
        caller bounds that wait). A reused connection the server had closed before answering
        raises :class:`StaleConnection`; nothing is resent here."""
        body = request.body
        head = (f"{request.method} {self._target}{request.path} HTTP/1.1\r\n{self._fixed}"
                f"Content-Length: {len(body)}\r\n").encode("latin-1") + request.headers + b"\r\n"
        conn, reused = await self._acquire()
        try:
            conn.send(head, body)
            await conn.wait_headers()
        except _Stale:
            conn.close()
            self._forget(conn)
            if reused:
                raise
            raise RemoteProtocolError("the upstream closed the connection before answering") from None
        except BaseException:
            conn.close()
            self._forget(conn)
            raise
        return Response(conn, request.idle_timeout)

    async def request(self, method: str, path: str, headers: bytes, body: bytes, *,
                      idle_timeout: float | None) -> Response:
        """Send one request and wait for the response headers (the caller bounds that wait).
        A stale pooled connection is replaced once; a second failure is the caller's."""
        req = UpstreamRequest(method, path, headers, body, idle_timeout)
        try:
            return await self.handle_request(req)
        except StaleConnection:
            return await self.handle_request(req)

    async def _acquire(self) -> tuple[Connection, bool]:
        while True:
            if self._closed:
                raise ConnectError("the connection pool is closed")
            now = time.monotonic()
            while self._idle:
                conn = next(reversed(self._idle))
                del self._idle[conn]
                if not conn.closed and now - conn.idle_since < KEEPALIVE_S and conn.transport is not None \
                        and not conn.transport.is_closing():
                    return conn, True
                conn.close()
                self._forget(conn)
            if self._count < self.max_connections:
                break
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
        self._count += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await self._connect(loop)
        except BaseException as exc:
            self._count -= 1
            self._notify()
            if isinstance(exc, TimeoutError):
                raise ConnectError(f"connect to {self.where} timed out") from exc
            if isinstance(exc, OSError):
                raise ConnectError(f"cannot connect to {self.where}: {exc.strerror or exc}") from exc
            raise
        return conn, False

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        """Open one connection to the origin (a proxied pool opens it through its proxy)."""
        _, conn = await loop.create_connection(lambda: Connection(self, loop), self.host, self.port, ssl=self._ssl)
        return conn

    def _give_back(self, conn: Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            self._forget(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle[conn] = None
        self._notify()

    def _forget(self, conn: Connection) -> None:
        """A connection is gone for good (idempotent): free its slot."""
        self._idle.pop(conn, None)
        if conn.counted:
            conn.counted = False
            self._count -= 1
            self._notify()

    def _notify(self) -> None:
        """Wake one caller waiting for a connection slot."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()

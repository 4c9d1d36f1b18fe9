"""Outbound HTTP proxies for upstream calls: :class:`ProxiedPool`, the HTTP/1.1 connection pool
of ``_h1.py`` with its connections opened through a proxy.

- An ``https`` upstream is reached through an HTTP ``CONNECT`` tunnel: the pool connects to the
  proxy, asks for ``CONNECT host:port``, and on ``200`` starts TLS to the upstream inside the
  tunnel (the proxy sees only the upstream's host name). Each tunnel is one pooled keep-alive
  connection, reused like a direct one.
- An ``http`` upstream is reached with absolute-form requests (``POST http://host:port/path``)
  sent to the proxy over pooled keep-alive connections.
- The proxy URL's userinfo (``http://user:pass@host:port``, percent-encoded) becomes
  ``Proxy-Authorization: Basic``.

A proxy that cannot be reached, answers the tunnel with anything but 200, or answers a forwarded
request with 407 raises :class:`~stepplan.engines.transport.ProxyError`, whose message names the
proxy's ``host:port`` and never its credentials. ``make_transport`` imports this module only for a
member with a proxy: the direct path carries no proxy code (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
import ssl

from ._h1 import Connection, ConnectionPool, Response
from .proxy_url import parse_proxy_url, proxy_where
from .transport import ProxyError, UpstreamRequest

__all__ = ["ProxiedPool", "parse_proxy_url", "proxy_where"]

MAX_CONNECT_HEAD = 16 * 1024  # a CONNECT answer's head larger than this is refused


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (up to the blank line)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buf = bytearray()
        self.head: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self.head.set_result(bytes(self.buf[:end]))
        elif len(self.buf) > MAX_CONNECT_HEAD:
            self.head.set_exception(ValueError("answer head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionResetError("closed the connection"))


class ProxiedPool(ConnectionPool):
    """A :class:`ConnectionPool` whose connections go through an HTTP proxy."""

    def __init__(self, base_url: str, proxy: str, *, max_connections: int = 10_000, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, user_agent: str = "stepplan") -> None:
        super().__init__(base_url, max_connections=max_connections, connect_timeout=connect_timeout,
                         ssl_context=ssl_context, user_agent=user_agent)
        self.proxy_host, self.proxy_port, creds = parse_proxy_url(proxy)
        host = f"[{self.proxy_host}]" if ":" in self.proxy_host else self.proxy_host
        self.proxy_where = f"{host}:{self.proxy_port}"
        self.where = f"{self.host}:{self.port} through proxy {self.proxy_where}"
        self._auth = "" if creds is None else \
            f"Proxy-Authorization: Basic {base64.b64encode(creds.encode()).decode('ascii')}\r\n"
        target_host = f"[{self.host}]" if ":" in self.host else self.host
        self._authority = f"{target_host}:{self.port}"
        if self.scheme == "http":  # absolute-form requests to the proxy, which forwards them
            self._target = f"http://{self.host_header}{self.prefix}"
            self._fixed += self._auth

    async def handle_request(self, request: UpstreamRequest) -> Response:
        resp = await super().handle_request(request)
        if resp.status == 407 and self.scheme == "http":
            resp.close()
            raise ProxyError(f"proxy {self.proxy_where} refused the request: 407 Proxy Authentication Required "
                             f"({'wrong' if self._auth else 'no'} proxy credentials)")
        return resp

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        factory = (lambda: Connection(self, loop)) if self.scheme == "http" else (lambda: _Tunnel(loop))
        try:
            transport, proto = await loop.create_connection(factory, self.proxy_host, self.proxy_port)
        except OSError as exc:
            raise ProxyError(f"cannot connect to proxy {self.proxy_where}: {exc.strerror or exc}") from exc
        if isinstance(proto, Connection):
            return proto
        assert isinstance(proto, _Tunnel)
        try:
            transport.write(f"CONNECT {self._authority} HTTP/1.1\r\nHost: {self._authority}\r\n{self._auth}\r\n"
                            .encode("latin-1"))
            try:
                head = await proto.head
            except (OSError, ValueError) as exc:
                raise ProxyError(f"proxy {self.proxy_where} {exc} instead of opening a tunnel to "
                                 f"{self._authority}") from None
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "200":
                what = " ".join(parts[1:])[:100] if len(parts) >= 2 else repr(status_line[:100])
                hint = f" ({'wrong' if self._auth else 'no'} proxy credentials)" if parts[1:2] == ["407"] else ""
                raise ProxyError(f"proxy {self.proxy_where} refused the tunnel to {self._authority}: {what}{hint}")
            conn = Connection(self, loop)
            assert self._ssl is not None
            tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=self.host)
            if tls is None:
                raise ProxyError(f"proxy {self.proxy_where} closed the tunnel to {self._authority}")
            conn.connection_made(tls)
            return conn
        except BaseException:
            transport.close()
            raise

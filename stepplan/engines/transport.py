"""The transport seam: how an engine's bytes reach one upstream and come back.

One method, like httpx's ``BaseTransport.handle_request``: a :class:`UpstreamRequest` in, an
:class:`UpstreamResponse` out once its status and headers have arrived, the body then read as an
async byte stream. Everything above it (engines, the retry logic in ``_http.py``) is written
against this interface only, so

- tests drive engines and retries in-process with a scripted transport
  (``tests/engines/scripted.py``), no sockets;
- another way out (HTTP/2, ...) is one more class and one line in
  :func:`stepplan.engines._http.make_transport`, with no change to any engine.

The production transports are :class:`stepplan.engines._h1.ConnectionPool` (pooled HTTP/1.1) and,
for a member with an outbound proxy, its subclass :class:`stepplan.engines._proxy.ProxiedPool`.

A transport sends a request at most once: it never resends on its own. Errors it raises are
:class:`HTTPError` subclasses; :class:`StaleConnection` says nothing at all was received, so the
caller may resend (the caller counts that resend against its retry budget).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol


class HTTPError(Exception):
    """Any failure talking to the upstream (the caller maps it to a gateway error)."""


class ConnectError(HTTPError):
    """The connection could not be opened (refused, unreachable, connect timeout)."""


class ProxyError(ConnectError):
    """The outbound proxy could not be reached or refused to carry the request (407, 403, a
    CONNECT answered with anything but 200). The message names the proxy's host, never its
    credentials."""


class RemoteProtocolError(HTTPError):
    """The upstream broke the protocol or the connection mid-exchange."""


class ReadTimeout(HTTPError, TimeoutError):
    """The upstream went idle for longer than the request's ``idle_timeout``."""


class StaleConnection(RemoteProtocolError):
    """A reused keep-alive connection closed before any byte of the answer: safe to resend."""


class UpstreamRequest:
    """One request to an upstream.

    ``path`` is relative to the upstream's base URL (the transport adds its path prefix);
    ``headers`` are rendered ``Name: value\\r\\n`` lines (rendered once per upstream and reused,
    see :func:`render_headers`); ``idle_timeout`` bounds each wait for body bytes.
    """

    __slots__ = ("body", "headers", "idle_timeout", "method", "path")

    def __init__(self, method: str, path: str, headers: bytes, body: bytes, idle_timeout: float | None) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.idle_timeout = idle_timeout

    def header_dict(self) -> dict[str, str]:
        """The headers as a dict with lower-case names (for tests and non-HTTP/1.1 transports)."""
        out: dict[str, str] = {}
        for line in self.headers.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                out[name.strip().lower()] = value.strip()
        return out


class UpstreamResponse(Protocol):
    """An answer whose status and headers have arrived; the body is read once, then released."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-case names; a repeated header's values joined with ", "."""
        ...

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive; raises :class:`HTTPError` if the body breaks off."""
        ...

    async def read(self) -> bytes: ...

    def read_now(self) -> bytes | None:
        """The whole body when all of it has already arrived (then the answer is released), else
        None and nothing is consumed: a small answer usually comes with its head, and needs no
        timer or generator to be read."""
        ...

    def close(self) -> None:
        """Drop the answer (and whatever carries it) without reading the rest."""


class Transport(Protocol):
    async def handle_request(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request`` once and return when the response head has arrived (the caller
        bounds that wait). Raises :class:`HTTPError` (or a subclass) on failure."""
        ...

    async def aclose(self) -> None: ...


def _header_line(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError(f"invalid header {name!r}")
    return f"{name}: {value}\r\n".encode("latin-1")


def render_headers(headers: dict[str, str]) -> bytes:
    """``Name: value\\r\\n`` lines; ValueError for a header that would inject another."""
    return b"".join(_header_line(k, v) for k, v in headers.items())

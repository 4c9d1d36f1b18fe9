"""HTTP access to one upstream over a :class:`~stepplan.engines.transport.Transport`, with
timeouts and bounded retries.

Retries happen only before anything has reached the client: connect errors, a connection that
closed before answering, no answer within ``first_byte_timeout``, and 429/5xx answers (honouring
``Retry-After``). Every request sent counts against the budget: at most ``1 + max_retries``
requests reach the upstream per call, whatever failed (a reused keep-alive connection found
closed is resent at once, without backoff, but still counts). Nothing is retried once the
response head has arrived. Streaming bodies are read as they arrive.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..settings import UpstreamConfig
from .transport import (
    ConnectError,
    HTTPError,
    ReadTimeout,
    StaleConnection,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
    render_headers,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
_STREAM_ACCEPT = b"Accept: text/event-stream\r\nAccept-Encoding: identity\r\n"
_JSON_ACCEPT = b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\n"


def backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; an upstream's Retry-After wins when it is sane."""
    if retry_after is not None and 0 <= retry_after <= 30:
        return retry_after
    return min(8.0, 0.25 * (2**attempt)) * (0.5 + random.random() / 2)


async def sleep_backoff(attempt: int, retry_after: float | None) -> None:
    await asyncio.sleep(backoff(attempt, retry_after))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def make_transport(cfg: UpstreamConfig) -> Transport:
    """The transport for an upstream's config (the one place that picks a transport)."""
    from ._h1 import ConnectionPool

    return ConnectionPool(cfg.base_url, max_connections=cfg.max_connections, connect_timeout=cfg.connect_timeout)


def _error_message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode(errors="replace") or "no body"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return raw[:300].decode(errors="replace")


class HTTPUpstream:
    def __init__(self, cfg: UpstreamConfig, auth_headers: dict[str, str], transport: Transport | None = None):
        self.cfg = cfg
        self.headers = {"content-type": "application/json", **auth_headers, **cfg.headers}
        self._static = render_headers(self.headers)
        self.transport = transport if transport is not None else make_transport(cfg)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool) -> UpstreamResponse:
        """Send the request and wait for response headers; retry what is retryable."""
        cfg = self.cfg
        headers = self._static + render_headers(extra) if extra else self._static
        request = UpstreamRequest("POST", path, headers + (_STREAM_ACCEPT if stream else _JSON_ACCEPT),
                                  orjson.dumps(body), cfg.idle_timeout)
        handle = self.transport.handle_request
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(cfg.first_byte_timeout):
                    resp = await handle(request)
            except TimeoutError as exc:
                if attempt < cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamTimeout(f"upstream {cfg.name} did not answer within "
                                      f"{cfg.first_byte_timeout:g}s") from exc
            except StaleConnection as exc:
                if attempt < cfg.max_retries:
                    attempt += 1  # resent at once: the server closed an idle connection, nothing failed
                    continue
                raise UpstreamError(f"bad answer from upstream {cfg.name}: {exc}") from exc
            except HTTPError as exc:
                if attempt < cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                what = "cannot reach" if isinstance(exc, ConnectError) else "bad answer from"
                raise UpstreamError(f"{what} upstream {cfg.name}: {exc}") from exc
            if resp.status < 400:
                return resp
            try:
                raw = await resp.read()
            except HTTPError:
                raw = b""
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if resp.status in RETRY_STATUSES and attempt < cfg.max_retries:
                attempt += 1
                await sleep_backoff(attempt, retry_after)
                continue
            raise upstream_error_for_status(resp.status, _error_message(raw), retry_after)

    async def post_json(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None) -> Any:
        try:
            async with asyncio.timeout(self.cfg.total_timeout):
                resp = await self._open(path, body, extra or {}, False)
                raw = await resp.read()
        except ReadTimeout as exc:
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {self.cfg.name} timed out") from exc
        except HTTPError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} failed mid-response: {exc}") from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} sent invalid JSON") from exc

    async def stream(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None
                     ) -> AsyncGenerator[bytes, None]:
        """Yield raw body bytes as they arrive. Closing the iterator closes the upstream call."""
        resp = await self._open(path, body, extra or {}, True)
        del body  # sent: a long stream should not keep the (possibly large) request alive
        chunks = resp.chunks()
        try:
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype and "json" in ctype:
                # Some servers answer a stream request with an error document and status 200.
                raw = await resp.read()
                raise UpstreamError(f"upstream {self.cfg.name} did not stream: {_error_message(raw)}")
            async for chunk in chunks:
                yield chunk
        except ReadTimeout as exc:
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except HTTPError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} broke off the stream: {exc}") from exc
        except GatewayError:
            raise
        finally:
            await chunks.aclose()  # a body not read to the end closes its connection
            resp.close()

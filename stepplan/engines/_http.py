"""Pooled HTTP access to one upstream, with timeouts and bounded retries.

Retries happen only before anything has reached the client: connect errors, 429 and
5xx answers, honouring ``Retry-After``. Streaming bodies are read as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..settings import UpstreamConfig
from ._h1 import ConnectError, ConnectionPool, HTTPError, ReadTimeout, Response, render_headers
from .base import parse_retry_after, sleep_backoff

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


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
    def __init__(self, cfg: UpstreamConfig, auth_headers: dict[str, str]):
        self.cfg = cfg
        self.headers = {"content-type": "application/json", **auth_headers, **cfg.headers}
        self._static = render_headers(self.headers)
        self.pool = ConnectionPool(cfg.base_url, max_connections=cfg.max_connections,
                                   connect_timeout=cfg.connect_timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool) -> Response:
        """Send the request and wait for response headers; retry what is retryable."""
        data = orjson.dumps(body)
        headers = self._static + render_headers(extra) if extra else self._static
        headers += b"Accept: text/event-stream\r\nAccept-Encoding: identity\r\n" if stream else \
            b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\n"
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout):
                    resp = await self.pool.request("POST", path, headers, data, idle_timeout=self.cfg.idle_timeout)
            except TimeoutError as exc:
                if attempt < self.cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamTimeout(f"upstream {self.cfg.name} did not answer within "
                                      f"{self.cfg.first_byte_timeout:g}s") from exc
            except HTTPError as exc:
                if attempt < self.cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                what = "cannot reach" if isinstance(exc, ConnectError) else "bad answer from"
                raise UpstreamError(f"{what} upstream {self.cfg.name}: {exc}") from exc
            if resp.status < 400:
                return resp
            try:
                raw = await resp.read()
            except HTTPError:
                raw = b""
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if resp.status in RETRY_STATUSES and attempt < self.cfg.max_retries:
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
                     ) -> AsyncIterator[bytes]:
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

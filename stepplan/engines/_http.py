"""Pooled HTTP access to one upstream, with timeouts and bounded retries.

Retries happen only before anything has reached the client: connect errors, 429 and
5xx answers, honouring ``Retry-After``. Streaming bodies are read as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..settings import UpstreamConfig
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
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.max_connections, ttl_dns_cache=300,
                                               enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout,
                                              sock_read=self.cfg.idle_timeout),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str]) -> aiohttp.ClientResponse:
        """Send the request and wait for response headers; retry what is retryable."""
        url = self.cfg.base_url + path
        data = orjson.dumps(body)
        headers = {**self.headers, **extra} if extra else self.headers
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout):
                    resp = await self.session().post(url, data=data, headers=headers)
            except TimeoutError as exc:
                if attempt < self.cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamTimeout(f"upstream {self.cfg.name} did not answer within "
                                      f"{self.cfg.first_byte_timeout:g}s") from exc
            except aiohttp.ClientError as exc:
                if attempt < self.cfg.max_retries:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamError(f"cannot reach upstream {self.cfg.name}: {exc.__class__.__name__}") from exc
            if resp.status < 400:
                return resp
            raw = await resp.read()
            resp.release()
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if resp.status in RETRY_STATUSES and attempt < self.cfg.max_retries:
                attempt += 1
                await sleep_backoff(attempt, retry_after)
                continue
            raise upstream_error_for_status(resp.status, _error_message(raw), retry_after)

    async def post_json(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None) -> Any:
        try:
            async with asyncio.timeout(self.cfg.total_timeout):
                resp = await self._open(path, body, extra or {})
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {self.cfg.name} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} failed mid-response: {exc.__class__.__name__}") from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} sent invalid JSON") from exc

    async def stream(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None
                     ) -> AsyncIterator[bytes]:
        """Yield raw body bytes as they arrive. Closing the iterator closes the upstream call."""
        resp = await self._open(path, body, extra or {})
        done = False
        try:
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype and "json" in ctype:
                # Some servers answer a stream request with an error document and status 200.
                raw = await resp.read()
                raise UpstreamError(f"upstream {self.cfg.name} did not stream: {_error_message(raw)}")
            async for chunk in resp.content.iter_any():
                yield chunk
            done = True
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.cfg.name} broke off the stream: {exc.__class__.__name__}") from exc
        except GatewayError:
            raise
        finally:
            if done:
                resp.release()  # keep the pooled connection
            else:
                resp.close()  # client went away or the upstream failed: drop the connection

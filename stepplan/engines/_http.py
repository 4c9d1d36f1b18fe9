"""Pooled HTTP access to one upstream, with timeouts and bounded retries.

Retries happen only before anything has reached the client: connect errors, 429 and
5xx answers, honouring ``Retry-After``. Streaming bodies are read as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..logs import REDACTED
from ..observability import tracing
from ..settings import UpstreamConfig
from ._h1 import ConnectError, ConnectionPool, HTTPError, ReadTimeout, Response, render_headers
from .base import parse_retry_after, sleep_backoff

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


class UpstreamObserver(Protocol):
    """Told about upstream calls (metrics): open calls per upstream, and every failed attempt by
    kind (connect, timeout, 429, 5xx, 4xx, broken_stream, bad_response) and whether it is retried."""

    def upstream_started(self, upstream: str) -> None: ...

    def upstream_finished(self, upstream: str) -> None: ...

    def upstream_error(self, upstream: str, kind: str, retrying: bool) -> None: ...


class _NoObserver:
    def upstream_started(self, upstream: str) -> None:
        return None

    def upstream_finished(self, upstream: str) -> None:
        return None

    def upstream_error(self, upstream: str, kind: str, retrying: bool) -> None:
        return None


_observer: UpstreamObserver = _NoObserver()


def set_observer(observer: UpstreamObserver | None) -> None:
    """Install the process's upstream observer (``app.create_app``: the metrics); None: none."""
    global _observer
    _observer = observer if observer is not None else _NoObserver()


def _status_kind(status: int) -> str:
    if status == 429:
        return "429"
    return "5xx" if status >= 500 else "4xx"


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
        self._secret = cfg.api_key or ""
        self.headers = {"content-type": "application/json", **auth_headers, **cfg.headers}
        self._static = render_headers(self.headers)
        self.pool = ConnectionPool(cfg.base_url, max_connections=cfg.max_connections,
                                   connect_timeout=cfg.connect_timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()

    def _message(self, raw: bytes) -> str:
        """An upstream's error text, without the upstream key should it echo it back."""
        msg = _error_message(raw)
        return msg.replace(self._secret, REDACTED) if self._secret and self._secret in msg else msg

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool
                    ) -> tuple[Response, Any]:
        """Send the request and wait for response headers; retry what is retryable. Returns the
        response and, with tracing on, the open span of the attempt that answered (else None)."""
        data = orjson.dumps(body)
        headers = self._static + render_headers(extra) if extra else self._static
        headers += b"Accept: text/event-stream\r\nAccept-Encoding: identity\r\n" if stream else \
            b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\n"
        attempt = 0
        name, obs = self.cfg.name, _observer
        while True:
            span = None
            sent = headers
            if tracing.enabled:
                span = tracing.start_child("upstream", {"stepplan.upstream": name, "stepplan.attempt": attempt + 1,
                                                        "url.path": path})
                sent = headers + b"traceparent: " + tracing.traceparent(span).encode() + b"\r\n"
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout):
                    resp = await self.pool.request("POST", path, sent, data, idle_timeout=self.cfg.idle_timeout)
            except TimeoutError as exc:
                retry = attempt < self.cfg.max_retries
                obs.upstream_error(name, "timeout", retry)
                if span is not None:
                    tracing.fail(span, "timeout")
                    span.end()
                if retry:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamTimeout(f"upstream {self.cfg.name} did not answer within "
                                      f"{self.cfg.first_byte_timeout:g}s") from exc
            except HTTPError as exc:
                retry = attempt < self.cfg.max_retries
                obs.upstream_error(name, "connect" if isinstance(exc, ConnectError) else "bad_response", retry)
                if span is not None:
                    tracing.fail(span, type(exc).__name__)
                    span.end()
                if retry:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                what = "cannot reach" if isinstance(exc, ConnectError) else "bad answer from"
                raise UpstreamError(f"{what} upstream {self.cfg.name}: {exc}") from exc
            except BaseException:
                if span is not None:
                    span.end()
                raise
            if span is not None:
                span.set_attribute("http.response.status_code", resp.status)
            if resp.status < 400:
                return resp, span
            try:
                raw = await resp.read()
            except HTTPError:
                raw = b""
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            retry = resp.status in RETRY_STATUSES and attempt < self.cfg.max_retries
            obs.upstream_error(name, _status_kind(resp.status), retry)
            if span is not None:
                tracing.fail(span, f"HTTP {resp.status}")
                span.end()
            if retry:
                attempt += 1
                await sleep_backoff(attempt, retry_after)
                continue
            raise upstream_error_for_status(resp.status, self._message(raw), retry_after)

    async def post_json(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None) -> Any:
        name, obs = self.cfg.name, _observer
        obs.upstream_started(name)
        span = None
        try:
            async with asyncio.timeout(self.cfg.total_timeout):
                resp, span = await self._open(path, body, extra or {}, False)
                raw = await resp.read()
        except ReadTimeout as exc:
            obs.upstream_error(name, "timeout", False)
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except TimeoutError as exc:
            obs.upstream_error(name, "timeout", False)
            raise UpstreamTimeout(f"upstream {self.cfg.name} timed out") from exc
        except HTTPError as exc:
            obs.upstream_error(name, "broken_stream", False)
            raise UpstreamError(f"upstream {self.cfg.name} failed mid-response: {exc}") from exc
        finally:
            obs.upstream_finished(name)
            if span is not None:
                span.end()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            obs.upstream_error(name, "bad_response", False)
            raise UpstreamError(f"upstream {self.cfg.name} sent invalid JSON") from exc

    async def stream(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None
                     ) -> AsyncIterator[bytes]:
        """Yield raw body bytes as they arrive. Closing the iterator closes the upstream call."""
        name, obs = self.cfg.name, _observer
        obs.upstream_started(name)
        try:
            resp, span = await self._open(path, body, extra or {}, True)
        except BaseException:
            obs.upstream_finished(name)
            raise
        del body  # sent: a long stream should not keep the (possibly large) request alive
        chunks = resp.chunks()
        try:
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype and "json" in ctype:
                # Some servers answer a stream request with an error document and status 200.
                raw = await resp.read()
                obs.upstream_error(name, "bad_response", False)
                raise UpstreamError(f"upstream {self.cfg.name} did not stream: {self._message(raw)}")
            async for chunk in chunks:
                yield chunk
        except ReadTimeout as exc:
            obs.upstream_error(name, "timeout", False)
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except HTTPError as exc:
            obs.upstream_error(name, "broken_stream", False)
            raise UpstreamError(f"upstream {self.cfg.name} broke off the stream: {exc}") from exc
        except GatewayError:
            raise
        finally:
            obs.upstream_finished(name)
            if span is not None:
                span.end()
            await chunks.aclose()  # a body not read to the end closes its connection
            resp.close()

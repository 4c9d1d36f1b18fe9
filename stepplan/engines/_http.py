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
from typing import Any, Protocol

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..logs import REDACTED
from ..observability import tracing
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
    def __init__(self, cfg: UpstreamConfig, auth_headers: dict[str, str], transport: Transport | None = None):
        self.cfg = cfg
        self._secret = cfg.api_key or ""
        self.headers = {"content-type": "application/json", **auth_headers, **cfg.headers}
        self._static = render_headers(self.headers)
        self.transport = transport if transport is not None else make_transport(cfg)

    async def aclose(self) -> None:
        await self.transport.aclose()

    def _message(self, raw: bytes) -> str:
        """An upstream's error text, without the upstream key should it echo it back."""
        msg = _error_message(raw)
        return msg.replace(self._secret, REDACTED) if self._secret and self._secret in msg else msg

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool
                    ) -> tuple[UpstreamResponse, Any]:
        """Send the request and wait for response headers; retry what is retryable (every send counts
        against ``max_retries``). Returns the response and, with tracing on, the open span of the
        attempt that answered (else None)."""
        cfg = self.cfg
        headers = self._static + render_headers(extra) if extra else self._static
        request = UpstreamRequest("POST", path, headers + (_STREAM_ACCEPT if stream else _JSON_ACCEPT),
                                  orjson.dumps(body), cfg.idle_timeout)
        handle = self.transport.handle_request
        name, obs = cfg.name, _observer
        attempt = 0
        while True:
            span = None
            sent = request
            if tracing.enabled:
                span = tracing.start_child("upstream", {"stepplan.upstream": name, "stepplan.attempt": attempt + 1,
                                                        "url.path": path})
                sent = UpstreamRequest(request.method, request.path, request.headers + b"traceparent: "
                                       + tracing.traceparent(span).encode() + b"\r\n", request.body,
                                       request.idle_timeout)
            try:
                async with asyncio.timeout(cfg.first_byte_timeout):
                    resp = await handle(sent)
            except TimeoutError as exc:
                retry = attempt < cfg.max_retries
                obs.upstream_error(name, "timeout", retry)
                _end(span, "timeout")
                if retry:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                raise UpstreamTimeout(f"upstream {cfg.name} did not answer within "
                                      f"{cfg.first_byte_timeout:g}s") from exc
            except StaleConnection as exc:
                retry = attempt < cfg.max_retries
                _end(span, type(exc).__name__)
                if retry:
                    attempt += 1  # resent at once: the server closed an idle connection, nothing failed
                    continue
                obs.upstream_error(name, "bad_response", False)
                raise UpstreamError(f"bad answer from upstream {cfg.name}: {exc}") from exc
            except HTTPError as exc:
                retry = attempt < cfg.max_retries
                obs.upstream_error(name, "connect" if isinstance(exc, ConnectError) else "bad_response", retry)
                _end(span, type(exc).__name__)
                if retry:
                    attempt += 1
                    await sleep_backoff(attempt, None)
                    continue
                what = "cannot reach" if isinstance(exc, ConnectError) else "bad answer from"
                raise UpstreamError(f"{what} upstream {cfg.name}: {exc}") from exc
            except BaseException:
                _end(span, None)
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
            retry = resp.status in RETRY_STATUSES and attempt < cfg.max_retries
            obs.upstream_error(name, _status_kind(resp.status), retry)
            _end(span, f"HTTP {resp.status}")
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
                     ) -> AsyncGenerator[bytes, None]:
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


def _end(span: Any, failure: str | None) -> None:
    """End an attempt's span (tracing on), marking it failed when ``failure`` is given."""
    if span is None:
        return
    if failure is not None:
        tracing.fail(span, failure)
    span.end()

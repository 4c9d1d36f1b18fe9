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
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Protocol

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeout, upstream_error_for_status
from ..logs import REDACTED, redact
from ..observability import tracing
from ..settings import MemberConfig, UpstreamConfig
from .base import CallContext
from .pool import Member, Pool
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
log = logging.getLogger("stepplan.upstream")


def backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; an upstream's Retry-After wins when it is sane."""
    if retry_after is not None and 0 <= retry_after <= 30:
        return retry_after
    return min(8.0, 0.25 * (2**attempt)) * (0.5 + random.random() / 2)


async def _sleep(seconds: float) -> None:
    """Wait for a cooling member (tests replace this to record the waits)."""
    if seconds > 0:
        await asyncio.sleep(seconds)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def make_transport(cfg: UpstreamConfig, member: MemberConfig | None = None) -> Transport:
    """The transport for one member of an upstream (the one place that picks a transport): pooled
    HTTP/1.1, through the member's proxy when it has one (``settings`` resolved the explicit
    setting or the environment into ``member.proxy``; "" is direct)."""
    from ._h1 import ConnectionPool, default_ssl_context

    m = member if member is not None else cfg.pool_members()[0]
    ssl_context = default_ssl_context(cfg.ca_file) if m.base_url.startswith("https:") else None
    if m.proxy:
        from ._proxy import ProxiedPool

        return ProxiedPool(m.base_url, m.proxy, max_connections=cfg.max_connections,
                           connect_timeout=cfg.connect_timeout, ssl_context=ssl_context)
    return ConnectionPool(m.base_url, max_connections=cfg.max_connections, connect_timeout=cfg.connect_timeout,
                          ssl_context=ssl_context)


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


AuthHeaders = dict[str, str] | Callable[[str | None], dict[str, str]]


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


def _end(span: Any, failure: str | None) -> None:
    """End an attempt's span (tracing on), marking it failed when ``failure`` is given."""
    if span is None:
        return
    if failure is not None:
        tracing.fail(span, failure)
    span.end()


class _Sender:
    """One member's way out: its transport and its rendered static headers."""

    __slots__ = ("label", "member", "static", "transport")

    def __init__(self, member: Member, static: bytes, transport: Transport, label: str) -> None:
        self.member, self.static, self.transport = member, static, transport
        self.label = label  # upstream/member: x-stepplan-served-by


class HTTPUpstream:
    """An upstream's pool of members (one for the single-member form) with retries across them.

    ``auth`` renders a member's key as headers (or is one fixed dict for every member);
    ``transport`` is one transport for every member or a mapping member name → transport (tests);
    by default each member gets :func:`make_transport` for its base URL.
    """

    def __init__(self, cfg: UpstreamConfig, auth: AuthHeaders,
                 transport: Transport | Mapping[str, Transport] | None = None, pool: Pool | None = None):
        self.cfg = cfg
        self.pool = pool if pool is not None else Pool(cfg)
        self.senders: dict[str, _Sender] = {}
        for m in self.pool.members:
            auth_headers = auth if isinstance(auth, dict) else auth(m.cfg.api_key)
            headers = {"content-type": "application/json", **auth_headers, **cfg.headers}
            if transport is None:
                t = make_transport(cfg, m.cfg)
            elif isinstance(transport, Mapping):
                t = transport[m.name]
            else:
                t = transport
            self.senders[m.name] = _Sender(m, render_headers(headers), t, f"{cfg.name}/{m.name}")
        self.transport = next(iter(self.senders.values())).transport
        self.headers = {"content-type": "application/json", **cfg.headers}
        self._secrets = [m.cfg.api_key for m in self.pool.members if m.cfg.api_key]

    def _message(self, raw: bytes) -> str:
        """An upstream's error text, without any member's key should the upstream echo it back,
        nor anything else credential-shaped (``sk-…``, bearer tokens: ``logs.redact``)."""
        msg = _error_message(raw)
        for secret in self._secrets:
            if secret in msg:
                msg = msg.replace(secret, REDACTED)
        return redact(msg)

    async def aclose(self) -> None:
        closed: set[int] = set()
        for s in self.senders.values():
            if id(s.transport) not in closed:
                closed.add(id(s.transport))
                await s.transport.aclose()

    def _body_for(self, member: Member, body: dict[str, Any], model: str | None, cache: dict[str, bytes]) -> bytes:
        name = member.cfg.upstream_model.get(model) if model is not None else None
        key = name or ""
        raw = cache.get(key)
        if raw is None:
            raw = cache[key] = orjson.dumps({**body, "model": name} if name else body)
        return raw

    async def _open(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool,
                    ctx: CallContext | None = None, model: str | None = None, stop: float | None = None
                    ) -> tuple[UpstreamResponse, Member, Any]:
        """Send the request and wait for response headers, within the upstream's deadline (and by
        ``stop``, a loop time, when given). Returns the response, the member that answered and, with
        tracing on, its attempt's open span (else None). The deadline needs no timer of its own: each
        attempt's first-byte timeout is cut to what is left of it, and the waits between attempts are
        checked against it."""
        return await self._attempts(path, body, extra, stream, ctx, model, stop)

    def _past_deadline(self, total: bool = False) -> UpstreamTimeout:
        if total:
            return UpstreamTimeout(f"upstream {self.cfg.name} timed out (total_timeout {self.cfg.total_timeout:g}s)")
        return UpstreamTimeout(f"upstream {self.cfg.name} did not answer within its {self.cfg.deadline:g}s deadline")

    async def _attempts(self, path: str, body: dict[str, Any], extra: dict[str, str], stream: bool,
                        ctx: CallContext | None, model: str | None, stop: float | None = None
                        ) -> tuple[UpstreamResponse, Member, Any]:
        """Retry what is retryable, moving to another available member after a failure; every
        send counts against ``max_retries``, whichever member it went to."""
        cfg, pool = self.cfg, self.pool
        name, obs = cfg.name, _observer
        give_up = pool.clock() + cfg.deadline
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.deadline  # the deadline on the event loop's clock (the timeouts')
        total = stop is not None and stop < end  # the call's total_timeout ends first
        if total:
            end = stop  # type: ignore[assignment]
            give_up = pool.clock() + (end - loop.time())
        tail = (render_headers(extra) if extra else b"") + (_STREAM_ACCEPT if stream else _JSON_ACCEPT)
        bodies: dict[str, bytes] = {}
        session = ctx.session if ctx is not None else None
        failed: list[Member] = []  # members that failed this call (tried again only when none is left)
        attempt = 0
        member: Member | None = None
        last_delay = 0.0
        while True:
            if member is None:
                member = pool.pick(session, failed) or pool.pick(None)
                if member is None:  # every member is cooling down: wait for the first back
                    soonest = pool.soonest()
                    assert soonest is not None
                    if soonest.credentials_rejected:  # waiting cannot help: its key is wrong until an operator acts
                        raise UpstreamError(f"upstream {cfg.name} rejected the gateway's credentials; the "
                                            "gateway's operator must check its upstream API key",
                                            upstream_status=401)
                    wait = min(max(last_delay, soonest.cooldown_until - pool.clock()), cfg.cooldown_max)
                    if pool.clock() + wait > give_up:
                        raise UpstreamError(f"every member of upstream {cfg.name} is cooling down "
                                            "for longer than the call's deadline")
                    await _sleep(wait)
                    member = soonest
            sender = self.senders[member.name]
            head = sender.static + tail
            span = None
            if tracing.enabled:
                span = tracing.start_child("upstream", {"stepplan.upstream": name, "stepplan.attempt": attempt + 1,
                                                        "stepplan.member": member.name, "url.path": path})
                head += b"traceparent: " + tracing.traceparent(span).encode() + b"\r\n"
            request = UpstreamRequest("POST", path, head, self._body_for(member, body, model, bodies), cfg.idle_timeout)
            now = pool.clock()
            member.acquire(now)
            if ctx is not None:
                ctx.served_by = sender.label
            left = end - loop.time()
            limit = cfg.first_byte_timeout if cfg.first_byte_timeout < left else left
            try:
                if limit <= 0:
                    raise TimeoutError
                async with asyncio.timeout(limit):
                    resp = await sender.transport.handle_request(request)
            except StaleConnection as exc:
                member.release()
                member.probing = False
                _end(span, type(exc).__name__)
                if attempt < cfg.max_retries:
                    attempt += 1  # resent at once to the same member: an idle connection closed, nothing failed
                    continue
                obs.upstream_error(name, "bad_response", False)
                raise UpstreamError(f"bad answer from upstream {cfg.name}: {exc}") from exc
            except (TimeoutError, HTTPError) as exc:
                member.release()
                if limit < cfg.first_byte_timeout and type(exc) is TimeoutError:  # the call's deadline passed
                    member.probing = False
                    _end(span, "deadline")
                    raise self._past_deadline(total) from exc
                attempt += 1
                last_delay = backoff(member.failures, None)
                member.failed(last_delay, pool.clock())
                failed.append(member)
                kind = ("connect" if isinstance(exc, ConnectError) else "timeout"
                        if isinstance(exc, TimeoutError) else "bad_response")
                obs.upstream_error(name, kind, attempt <= cfg.max_retries)
                _end(span, type(exc).__name__)
                if attempt <= cfg.max_retries:
                    member = None
                    continue
                if isinstance(exc, HTTPError) and not isinstance(exc, ReadTimeout):
                    what = "cannot reach" if isinstance(exc, ConnectError) else "bad answer from"
                    raise UpstreamError(f"{what} upstream {cfg.name}: {exc}") from exc
                raise UpstreamTimeout(f"upstream {cfg.name} did not answer within "
                                      f"{cfg.first_byte_timeout:g}s") from exc
            except BaseException:
                member.release()
                member.probing = False
                _end(span, None)
                raise
            if span is not None:
                span.set_attribute("http.response.status_code", resp.status)
            if resp.status < 400:
                member.succeeded()
                return resp, member, span
            member.release()
            try:
                async with asyncio.timeout(max(0.0, end - loop.time())):  # an error's body, within the deadline
                    raw = await resp.read()
            except HTTPError:
                raw = b""
            except TimeoutError as exc:
                resp.close()
                _end(span, "deadline")
                raise self._past_deadline(total) from exc
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            obs.upstream_error(name, _status_kind(resp.status),
                               resp.status in RETRY_STATUSES and attempt + 1 <= cfg.max_retries)
            _end(span, f"HTTP {resp.status}")
            if resp.status in (401, 403):  # the member's key is refused: out of rotation, try another member
                attempt += 1
                failed.append(member)
                if len(pool.members) > 1:  # another member can serve; a pool of one stays in (it has no
                    member.rejected(pool.clock())  # alternative, and a fixed key must work at once)
                    log.error("upstream %s member %s: HTTP %d, the upstream refused its credentials; out of "
                              "rotation for %gs (check its api_key)", cfg.name, member.name, resp.status,
                              cfg.cooldown_max)
                else:
                    log.error("upstream %s: HTTP %d, the upstream refused the gateway's credentials (check its "
                              "api_key)", cfg.name, resp.status)
                other = pool.pick(session, failed) if attempt <= cfg.max_retries else None
                if other is not None:
                    member = other
                    continue
                raise UpstreamError(f"upstream {cfg.name} rejected the gateway's credentials (HTTP {resp.status}); "
                                    "the gateway's operator must check its upstream API key",
                                    upstream_status=resp.status)
            if resp.status in RETRY_STATUSES:
                attempt += 1
                last_delay = backoff(member.failures, retry_after)
                member.failed(last_delay, pool.clock())
                failed.append(member)
                if attempt <= cfg.max_retries:
                    member = None
                    continue
            else:
                member.succeeded()  # a 4xx is the request's fault, never the member's
            raise upstream_error_for_status(resp.status, self._message(raw), retry_after)

    async def post_json(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None,
                        ctx: CallContext | None = None, model: str | None = None) -> Any:
        name, obs = self.cfg.name, _observer
        obs.upstream_started(name)
        member: Member | None = None
        span = None
        stop = asyncio.get_running_loop().time() + self.cfg.total_timeout
        try:
            resp, member, span = await self._open(path, body, extra or {}, False, ctx, model, stop)
            raw = resp.read_now()
            if raw is None:  # the body is still arriving (a small one comes with its head): what is left
                async with asyncio.timeout_at(stop):  # of total_timeout bounds it
                    raw = await resp.read()
        except ReadTimeout as exc:
            obs.upstream_error(name, "timeout", False)
            raise UpstreamTimeout(f"upstream {self.cfg.name} went idle for {self.cfg.idle_timeout:g}s") from exc
        except TimeoutError as exc:
            if isinstance(exc, GatewayError):
                raise
            obs.upstream_error(name, "timeout", False)
            raise UpstreamTimeout(f"upstream {self.cfg.name} timed out") from exc
        except HTTPError as exc:
            obs.upstream_error(name, "broken_stream", False)
            raise UpstreamError(f"upstream {self.cfg.name} failed mid-response: {exc}") from exc
        finally:
            obs.upstream_finished(name)
            if member is not None:
                member.release()
            if span is not None:
                span.end()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            obs.upstream_error(name, "bad_response", False)
            raise UpstreamError(f"upstream {self.cfg.name} sent invalid JSON") from exc

    async def stream(self, path: str, body: dict[str, Any], extra: dict[str, str] | None = None,
                     ctx: CallContext | None = None, model: str | None = None) -> AsyncGenerator[bytes, None]:
        """Yield raw body bytes as they arrive. Closing the iterator closes the upstream call."""
        name, obs = self.cfg.name, _observer
        obs.upstream_started(name)
        try:
            resp, member, span = await self._open(path, body, extra or {}, True, ctx, model)
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
            member.release()
            if span is not None:
                span.end()
            await chunks.aclose()  # a body not read to the end closes its connection
            resp.close()

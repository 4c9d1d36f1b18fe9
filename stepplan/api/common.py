"""Shared request plumbing for the protocol routes: trace ids, bodies, keys, errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest

from ..errors import ClientClosed, GatewayError, InvalidRequest, PayloadTooLarge
from ..pipeline import Settled
from ..store.accounts import KeyInfo
from .responses import JSONResponse, watch_connection

if TYPE_CHECKING:
    from ..pipeline import Call
    from ..protocols.canonical import Event, Usage

log = logging.getLogger("stepplan.api")

T = TypeVar("T")

_trace_prefix = os.urandom(4).hex()
_trace_counter = itertools.count(1)


def new_trace_id() -> str:
    return f"{_trace_prefix}{next(_trace_counter):012x}"


def trace_id(request: HTTPRequest) -> str:
    return request.scope["stepplan.trace_id"]


HEADER_MAP = "stepplan.headers"  # scope key of header_map's dict


def header_map(request: HTTPRequest) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (the first of a repeated name), built once per
    request: one C-level dict instead of a Python scan of the header list per lookup."""
    scope = request.scope
    h: dict[bytes, bytes] | None = scope.get(HEADER_MAP)
    if h is None:
        h = scope[HEADER_MAP] = dict(reversed(scope["headers"]))
    return h


def header(request: HTTPRequest, name: bytes) -> str | None:
    v = header_map(request).get(name)
    return None if v is None else v.decode("latin-1")


async def read_json(request: HTTPRequest, limit: int) -> tuple[Any, int]:
    length = header(request, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
            chunks.append(chunk)
    except ClientDisconnect:  # a normal event (the client gave up while sending), not a server error
        raise ClientClosed("the client closed the connection while sending the request body") from None
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from exc
    if raw.count(b"{") + raw.count(b"[") < MAX_DEPTH:  # too few brackets to nest that deep: nothing to check
        return body, size
    try:  # what the gateway forwards must serialize again (orjson nests 254 levels deep, parses 1,024)
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        where = too_deep(body, MAX_DEPTH)
        if where is not None:
            raise InvalidRequest(f"'{where}' is nested more than {MAX_DEPTH} levels deep", param=where) from exc
        raise InvalidRequest(f"the JSON body cannot be forwarded: {exc}") from exc
    return body, size


MAX_DEPTH = 200  # objects and arrays nested deeper than this are refused (JSON Schema needs a handful)


def too_deep(v: Any, limit: int) -> str | None:
    """The path of the first value nested more than ``limit`` levels deep, e.g.
    ``tools[0].function.parameters.properties.a…``; None when there is none."""
    stack: list[tuple[Any, str, int]] = [(v, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            parts = path.split(".")
            return ".".join(parts[:6]) + ("…" if len(parts) > 6 else "")
        if isinstance(node, dict):
            stack.extend((x, f"{path}.{k}" if path else str(k), depth + 1) for k, x in node.items())
        elif isinstance(node, list):
            stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(node))
    return None


async def authenticate(request: HTTPRequest) -> KeyInfo:
    from ..auth import key_from_headers

    auth = request.app.state.gateway.auth

    def client() -> str | None:  # only asked for keys with an IP allowlist
        peer = request.scope.get("client")
        return auth.client_address(peer[0] if peer else None, header(request, b"x-forwarded-for"))

    return await auth.authenticate(key_from_headers(header(request, b"authorization"),
                                                    header(request, b"x-api-key")), client)


def internal_error(trace: str) -> GatewayError:
    """What a client sees for a gateway bug: a 500 ``internal_error`` naming the trace id."""
    return GatewayError(f"internal error; quote trace id {trace} when reporting it")


def is_anthropic_path(path: str) -> bool:
    return "/messages" in path


def error_response(exc: GatewayError, trace: str, anthropic: bool) -> JSONResponse:
    body = exc.anthropic_body(trace) if anthropic else exc.openai_body(trace)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def session_id(request: HTTPRequest, metadata: Any = None) -> str | None:
    h = header_map(request)
    raw = h.get(b"x-session-id") or h.get(b"x-claude-code-session-id") or h.get(b"x-session-affinity")
    if raw:
        return raw.decode("latin-1")
    if isinstance(metadata, dict):
        uid = metadata.get("user_id")
        if isinstance(uid, str) and uid.startswith("{"):
            try:
                inner = orjson.loads(uid)
                if isinstance(inner, dict) and isinstance(inner.get("session_id"), str):
                    return inner["session_id"]
            except orjson.JSONDecodeError:
                return None
    return None


async def until_disconnect(request: HTTPRequest, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client goes away first; then cancel it (which cancels the
    upstream call and settles the reservation) and raise :class:`ClientClosed`.

    Under ``stepplan serve`` the connection itself cancels the handler when it is lost
    (``http_guard``): no task per call. Under another server, the request body has been read by
    now, so the next ASGI ``receive`` only returns when the client disconnects: one watcher task.
    """
    current = asyncio.current_task()
    conn, w = watch_connection(request.scope, current)
    if w is not None:
        try:
            return await work
        except asyncio.CancelledError:
            if w.gone:
                current.uncancel()  # type: ignore[union-attr]  # the cancellation was ours and is handled here
                raise ClientClosed("the client closed the connection before the response started") from None
            raise
        finally:
            conn.unwatch(w)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        if current is not None:
            current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            if current is not None:
                current.uncancel()  # the cancellation was ours and is handled here
            raise ClientClosed("the client closed the connection before the response started") from None
        raise
    finally:
        watcher.cancel()


class StreamCodec(Protocol):
    """The contract of every protocol's stream encoder (OpenAI chunks, Anthropic events, …):
    ``start(first)`` opens the stream, ``feed(e)`` encodes one canonical event, ``end(usage)``
    closes it with the billed usage, ``error(body)`` ends it with an in-protocol error event."""

    def start(self, first: Event) -> bytes: ...

    def feed(self, ev: Event) -> bytes: ...

    def end(self, billed: Usage | None = None) -> bytes: ...

    def error(self, body: dict[str, Any]) -> bytes: ...


async def sse_body(call: Call, enc: StreamCodec, error_body: Callable[[GatewayError], dict[str, Any]],
                   trace: str) -> AsyncIterator[bytes]:
    """The body of a streamed model response, in any protocol: the call's events encoded as they
    arrive, closing frames once :class:`~stepplan.pipeline.Settled` says the ledger entry is
    durable, and an in-protocol error event if anything fails after the first byte (never a
    silent cut)."""
    stream = call.stream()
    head = True
    try:
        async for item in stream:
            if isinstance(item, Settled):
                yield enc.end(item.usage)
                return
            if head:  # the opening frames and the first event leave in one write
                out, head = enc.start(item) + enc.feed(item), False
            else:
                out = enc.feed(item)
            if out:
                yield out
    except GatewayError as exc:
        yield enc.error(error_body(exc))
    except Exception:  # a bug must still end the stream in protocol, not as a cut connection
        log.exception("trace=%s stream failed", trace)
        yield enc.error(error_body(internal_error(trace)))
    finally:
        await stream.aclose()


# Keep-alive while a stream waits for its first token (issue 14): proxies cut idle streams.
PING_SSE = b": ping\n\n"  # an SSE comment: OpenAI chat and Responses clients skip it
PING_ANTHROPIC = b'event: ping\ndata: {"type": "ping"}\n\n'


async def open_stream(request: HTTPRequest, call: Call, interval: float) -> asyncio.Task[Any] | None:
    """Open the call (its first event), waiting up to ``interval``: None when it opened (a failure
    before then is raised, an HTTP error as always); else the still-running open, for
    :func:`pinged_body` to send pings over until it ends."""
    task: asyncio.Task[Any] = asyncio.ensure_future(call.open())
    try:
        await until_disconnect(request, asyncio.wait_for(asyncio.shield(task), interval))
    except TimeoutError:
        if not task.done():
            return task
        task.result()  # it ended just now: its own outcome
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        raise
    return None


def served_comment(call: Call) -> bytes:
    """What a pinged stream's headers could not say (they left before the call opened): an SSE
    comment, which every SSE client skips, naming the member that served and, when it is not the
    model asked for, the model (``: x-stepplan-served-by: up/member``)."""
    lines = []
    if call.ctx is not None and call.ctx.served_by:
        lines.append(f": x-stepplan-served-by: {call.ctx.served_by}\n")
    if call.spec.kind == "router" or call.served_model.id != call.spec.id:
        lines.append(f": x-stepplan-routed-model: {call.served_model.id}\n")
    return ("".join(lines) + "\n").encode() if lines else b""


async def pinged_body(opening: asyncio.Task[Any], ping: bytes, interval: float, frames: AsyncIterator[bytes],
                      enc: StreamCodec, error_body: Callable[[GatewayError], dict[str, Any]],
                      call: Call) -> AsyncIterator[bytes]:
    """A ping every ``interval`` until the call has opened, then what served it
    (:func:`served_comment`) and its frames; a failure before the first event (every member and
    fallback failed, or the deadline passed) becomes the protocol's error event, since the
    response has started."""
    try:
        while not opening.done():
            await asyncio.wait({opening}, timeout=interval)
            if not opening.done():
                yield ping
        try:
            opening.result()
        except GatewayError as exc:
            yield enc.error(error_body(exc))
            return
        except Exception:  # a bug before the first event: still an in-protocol end, never a cut stream
            log.exception("trace=%s stream failed before its first event", call.trace_id)
            yield enc.error(error_body(internal_error(call.trace_id)))
            return
        served = served_comment(call)
        if served:
            yield served
        async for out in frames:
            yield out
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        close = getattr(frames, "aclose", None)
        if close is not None:
            await close()


async def stream_frames(request: HTTPRequest, call: Call, enc: StreamCodec,
                        error_body: Callable[[GatewayError], dict[str, Any]], ping: bytes,
                        trace: str) -> AsyncIterator[bytes]:
    """Open a streamed call and return its body, in any protocol: the encoded events (``sse_body``),
    preceded by keep-alive ``ping`` frames when the first token takes longer than
    ``[server] stream_ping_seconds``. Call after this returns: the call's headers are final."""
    interval = request.app.state.gateway.settings.server.stream_ping_seconds
    opening = await open_stream(request, call, interval)
    frames = sse_body(call, enc, error_body, trace)
    if opening is not None:  # no first token yet: start the stream and keep it alive
        call.pinged = True  # its headers cannot say yet what serves it
        frames = pinged_body(opening, ping, interval, frames, enc, error_body, call)
    return frames

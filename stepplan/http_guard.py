"""Limits on what a client connection may do before the application sees a request.

uvicorn's httptools protocol accepts any number of headers of any size and waits for ever
for headers or a body that trickle in (slow-loris). :class:`GuardedHttpToolsProtocol` is the
same protocol with four limits (defaults in :class:`Limits`, set from ``[server]``):

* ``max_headers`` and ``max_header_bytes`` (the request head as it arrives): exceeded → 431;
* ``header_timeout``: a connection must deliver a request's complete headers this many seconds
  after it opened (or after the previous response) → otherwise 408 and closed;
* ``body_timeout``: a request's body must be complete this many seconds after its headers → 408.

A request the HTTP parser rejects (a DEL in a header, smuggling with both ``Content-Length``
and ``Transfer-Encoding``, a lying ``Content-Length``) gets a JSON error in the protocol of its
path (OpenAI or Anthropic shape) instead of uvicorn's plain-text 400.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .api.common import is_anthropic_path
from .api.responses import CONNECTION
from .errors import GatewayError, HeadersTooLarge, InvalidRequest, RequestTimeout

REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
           431: b"Request Header Fields Too Large"}


@dataclass(frozen=True, slots=True)
class Limits:
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 15.0
    body_timeout: float = 120.0


def error_bytes(exc: GatewayError, path: bytes) -> bytes:
    """A complete HTTP/1.1 response for ``exc`` in the protocol of ``path``, closing the connection."""
    anthropic = is_anthropic_path(path.decode("latin-1"))
    body = orjson.dumps(exc.anthropic_body("") if anthropic else exc.openai_body(""))
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (exc.status, REASONS.get(exc.status, b"Error"), len(body)))
    return head + body


class Watch:
    """A handler task watched for its client leaving (:meth:`GuardedHttpToolsProtocol.watch`)."""

    __slots__ = ("gone", "outer", "task")

    def __init__(self, task: asyncio.Task[Any], outer: Watch | None = None) -> None:
        self.task = task
        self.gone = False
        self.outer = outer  # a watch this one nests in (restored by unwatch)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits and header/body timeouts. It also tells a
    handler that its client left without a watcher task per call: :meth:`watch` registers the
    handler's task, and losing the connection cancels it (``api.common.until_disconnect``)."""

    # Slots: uvicorn's protocol keeps its state in the instance dict, and ten more keys there pushed
    # that dict into the next size (~1.5 KB more per connection, per open stream).
    __slots__ = ("_deadline", "_header_bytes", "_in_head", "_ref", "_rejected", "_timer", "_timer_at", "_watch",
                 "_why", "limits")

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: Limits = getattr(config, "stepplan_limits", None) or Limits()
        self._in_head = True  # the current request's headers are still arriving
        self._header_bytes = 0
        self._deadline: float | None = None  # when the current wait ends (loop time); None: no wait
        self._why = ""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._rejected = False
        self._watch: Watch | None = None
        self._ref = weakref.ref(self)  # what the scope holds: no reference cycle through the scope

    # ------------------------------------------------------------------ timers
    # One lazy timer per connection: arming a wait sets a deadline (two attribute writes); the
    # timer is only (re)scheduled when it would fire after the new deadline. When it fires early
    # (the deadline moved on) it reschedules itself; with no wait armed it stops. Requests on a
    # keep-alive connection therefore cost no timer operations, instead of two schedules and two
    # cancellations each.
    def _arm(self, seconds: float, message: str) -> None:
        deadline = self.loop.time() + seconds
        self._deadline, self._why = deadline, message
        if self._timer is None or self._timer_at > deadline:
            self._schedule(deadline)

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fire)

    def _disarm(self) -> None:
        self._deadline = None

    def _fire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if deadline > self.loop.time():
            self._schedule(deadline)
            return
        self._deadline = None
        self._expire(self._why)

    def _expire(self, message: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body is False:
            return  # the request is complete and being answered: never cut a response
        self._reject(RequestTimeout(message))

    def _reject(self, exc: GatewayError) -> None:
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self._disarm()
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(error_bytes(exc, getattr(self, "url", b"") or b""))
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, "the request headers did not arrive in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        w, self._watch = self._watch, None
        cancelled: list[asyncio.Task[Any]] = []
        while w is not None:  # nested watches: every level learns it; each task is cancelled once
            w.gone = True
            if w.task not in cancelled:
                cancelled.append(w.task)
                w.task.cancel()
            w = w.outer

    def watch(self, task: asyncio.Task[Any]) -> Watch | None:
        """Cancel ``task`` if the client goes away before :meth:`unwatch` (the current request's body
        has been read). None when the client has already gone."""
        cycle = self.cycle
        if cycle is None or cycle.disconnected or self.transport.is_closing():
            return None
        self.flow.resume_reading()  # a paused transport would not notice the client leaving
        w = self._watch = Watch(task, self._watch)
        return w

    def unwatch(self, w: Watch) -> None:
        if self._watch is w:
            self._watch = w.outer

    def data_received(self, data: bytes) -> None:
        """Header bytes are counted per network read (not per header: no Python call per header);
        a read that completes the headers is not checked, so a body in the same read never counts.
        A request whose headers have not ended after ``max_header_bytes`` gets its 431 at most one
        read late."""
        if self._rejected:
            return
        if self._in_head:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._header_bytes > self.limits.max_header_bytes and not self._rejected:
            self._reject(HeadersTooLarge(f"request headers larger than {self.limits.max_header_bytes} bytes"))

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: answer in JSON, in the protocol of its path."""
        self._reject(InvalidRequest(f"malformed HTTP request ({msg.rstrip('.')})"))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body:
            return  # answered before its body arrived (e.g. a 401): the body timer still runs
        if not self._rejected and not self.transport.is_closing():
            self._arm(self.limits.header_timeout + self.timeout_keep_alive, "idle connection")

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CONNECTION] = self._ref  # type: ignore[literal-required]
        self._in_head = True
        self._header_bytes = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout, "the request headers did not arrive in time")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if len(self.headers) > self.limits.max_headers:
            self._reject(HeadersTooLarge(f"more than {self.limits.max_headers} request headers"))
            raise ValueError("too many headers")  # stops the parser (it answers nothing more: rejected)
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and not self._rejected:
            self._arm(self.limits.body_timeout, "the request body did not arrive in time")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


__all__ = ["GuardedHttpToolsProtocol", "Limits", "Watch", "error_bytes"]

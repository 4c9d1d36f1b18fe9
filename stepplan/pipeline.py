"""One call from start to finish, in order:

    auth → catalog and capability rules → router → credit reservation
         → engine (complete or stream of canonical events) → settlement

Protocol codecs sit on either side (``api/``); this module never sees wire JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from .auth import Authenticator
from .billing.meter import Meter, Outcome, Reservation
from .billing.pricing import PriceBook
from .catalog import Catalog, ModelSpec
from .engines.base import CallContext
from .engines.registry import EngineRegistry
from .errors import GatewayError, InvalidRequest, PermissionDenied, UnsupportedContent
from .observability import tracing
from .observability.calls import CallObserver
from .observability.metrics import admitted
from .protocols import effort as efforts
from .protocols.canonical import (
    Audio,
    Block,
    Document,
    Event,
    Finish,
    Image,
    Request,
    Response,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    Usage,
    UsageUpdate,
    Video,
)
from .reasoning import ReasoningStore, Signer
from .routing.route import RouteChoice, Router
from .settings import Settings
from .store.accounts import KeyInfo
from .tokens import count_request, count_text, estimate_request

log = logging.getLogger("stepplan.call")


# ============================================================================ capability rules
def _media_kinds(req: Request) -> set[str]:
    kinds: set[str] = set()
    for m in req.messages:
        for b in m.content:
            for x in (b.content if isinstance(b, ToolResult) else (b,)):
                if isinstance(x, Image):
                    kinds.add("image")
                elif isinstance(x, Video):
                    kinds.add("video")
                elif isinstance(x, Audio):
                    kinds.add("audio")
                elif isinstance(x, Document) and x.text is None:
                    kinds.add("document")
    return kinds


def check_capabilities(req: Request, spec: ModelSpec) -> Request:
    """Reject what the model cannot take; resolve effort and thinking for it (contradictions
    included, see :mod:`stepplan.protocols.effort`). A router keeps the client's effort and
    thinking: each of its engines resolves them for itself (:func:`_engine_view`)."""
    for kind in _media_kinds(req):
        if kind == "document":
            raise UnsupportedContent(f"document input is not supported by model {spec.id}; "
                                     "send the document's text instead")
        if kind not in spec.input_modalities:
            raise UnsupportedContent(f"model {spec.id} does not accept {kind} input")
    effort, thinking = req.effort, req.thinking
    if spec.kind != "router":
        effort, thinking = efforts.resolve(spec, effort, thinking, req.thinking_budget)
    max_tokens = req.max_tokens
    if max_tokens is not None and max_tokens > spec.max_output:
        max_tokens = spec.max_output
    if effort != req.effort or thinking is not req.thinking or max_tokens != req.max_tokens:
        req = replace(req, effort=effort, thinking=thinking, max_tokens=max_tokens)
    return req


# ============================================================================ the call
@dataclass(slots=True, frozen=True)
class Settled:
    """The last item of a streamed call: its ledger entry is durable; ``usage`` is what was billed
    (the upstream's final count, or a local one), for the encoder's closing frames."""

    usage: Usage


@dataclass(slots=True)
class Call:
    """One call's life after admission. Both shapes read as one straight line:

    ``open()`` (first event, so failures before any byte are HTTP errors) → ``stream()``
    (events as they arrive, then :class:`Settled` once the ledger entry is durable); or
    ``complete()`` (the whole response, returned once its entry is durable). Either way the
    reservation taken by :meth:`Gateway.start_call` is settled exactly once, in ``_settle``.
    """

    gateway: Gateway
    req: Request
    spec: ModelSpec  # what the client asked for
    route: RouteChoice
    key: KeyInfo
    reservation: Reservation
    trace_id: str
    t0: float
    served: ModelSpec | None = None
    settlement: Awaitable[None] | None = None  # the meter's durability awaitable, set when the call settles
    upstream_s: float = 0.0  # time spent waiting on upstreams (to the first event, for streams)
    usage: Usage | None = None  # the billed usage, set when the call settles
    _events: AsyncGenerator[Event, None] | None = None
    _first: Event | None = None
    _recorded: Awaitable[None] | None = None  # the reasoning record's write, when the call made tool calls
    views: dict[str, Request] | None = None  # router calls: what each engine receives (by engine id)
    protocol: str = "openai"  # the client protocol, recorded on the ledger entry (and the metrics label)
    error_code: str | None = None  # the StepFun code of the last upstream failure (metrics, logs)
    finish: str | None = None  # the finish reason (traces)
    ctx: CallContext | None = None  # the latest engine attempt's context (its served_by: upstream/member)
    pinged: bool = False  # a stream whose head went out (keep-alive pings) before what serves it was known

    def request_for(self, spec: ModelSpec) -> Request:
        """The request as the engine serving ``spec`` receives it."""
        return self.views[spec.id] if self.views is not None else self.req

    @property
    def effort(self) -> str | None:
        """The effort the serving engine was sent (``x-stepplan-effort``); None when none was:
        the model has no levels, thinking was switched off, or the engine runs in process
        (the local engine has no reasoning mode)."""
        spec = self.served_model
        effort = self.request_for(spec).effort
        if effort is not None and self.gateway.engines.for_model(spec.id).protocol == "local":
            return None
        return effort

    def overhead_ms(self, arrived: float) -> str:
        """The gateway's own time so far: wall time since arrival minus upstream waiting."""
        return f"{max(0.0, (time.perf_counter() - arrived - self.upstream_s) * 1000):.3f}"

    @property
    def served_model(self) -> ModelSpec:
        return self.served or self.route.engines[0]

    def headers(self, arrived: float | None = None) -> dict[str, str]:
        """Response headers every protocol sends: Credit left, gateway overhead, the effort the
        serving engine was sent, and for ``step-router-v1`` the engine that served and why."""
        headers = self.gateway.meter.headers(self.reservation)
        if arrived is not None:
            overhead = max(0.0, time.perf_counter() - arrived - self.upstream_s)
            headers["x-stepplan-overhead-ms"] = f"{overhead * 1000:.3f}"
            self.gateway.observer.overhead(self, overhead)
        effort = self.effort
        if effort is not None:
            headers["x-stepplan-effort"] = effort
        if self.pinged:  # not known yet: api/common.served_comment says it in the stream
            return headers
        if self.ctx is not None and self.ctx.served_by:
            headers["x-stepplan-served-by"] = self.ctx.served_by
        if self.spec.kind == "router" or self.served_model.id != self.spec.id:
            headers["x-stepplan-routed-model"] = self.served_model.id
            if self.spec.kind == "router" and self.route.reason:
                headers["x-stepplan-route-reason"] = self.route.reason
        return headers

    def _ctx(self) -> CallContext:
        self.ctx = CallContext(self.trace_id, self.gateway.reasoning.restore, session=self.req.session_id)
        return self.ctx

    def _settle(self, usage: Usage, status: str, first_byte: float | None) -> Awaitable[None]:
        now = time.perf_counter()
        outcome = Outcome(
            served=self.served_model, usage=usage, status=status, route_score=self.route.score,
            first_byte_ms=None if first_byte is None else (first_byte - self.t0) * 1000,
            total_ms=(now - self.t0) * 1000, protocol=self.protocol,
        )
        self.usage = usage
        self.settlement = self.gateway.meter.settle(self.reservation, outcome)
        self.gateway.observer.settled(self, usage, status, first_byte, now)  # log record, metrics, span
        return self.settlement

    def _local_usage(self, output_text: str) -> Usage:
        """Counted here only when no upstream reported usable usage."""
        return Usage(input=count_request(self.req), output=count_text(output_text), known=False)

    def _billed(self, usage: Usage | None, produced: Callable[[], str], delivered: bool) -> Usage:
        """The usage to bill: the upstream's when it is its last word and representable; a local
        count when it reported none (or nonsense); and for a stream that ended before the upstream's
        final count (a client or upstream break), the larger of its running count and what was
        delivered, counted here — so a disconnect never bills a placeholder."""
        if usage is not None and usage.known and not self.gateway.billable(self.served_model, usage):
            log.warning("trace=%s upstream defect: %s reported usage whose cost the ledger cannot hold "
                        "(in=%d cache=%d out=%d); counting the call locally", self.trace_id, self.served_model.id,
                        usage.input, usage.cache_read, usage.output)
            usage = None
        if usage is None or not usage.known:
            return self._local_usage(produced()) if delivered else Usage()
        if not usage.final:
            counted = count_text(produced())
            return replace(usage, output=max(usage.output, counted), known=False, final=True)
        return usage

    async def complete(self) -> Response:
        """The whole response from the first engine that answers, returned once its ledger entry
        is durable; settles exactly once however the call ends."""
        status = "error"
        try:
            for i, spec in enumerate(self.route.engines):
                self.served = spec
                t = time.perf_counter()
                try:
                    resp = await self.gateway.engines.for_model(spec.id).complete(self.request_for(spec), spec,
                                                                                  self._ctx())
                except GatewayError as exc:
                    self.upstream_s += time.perf_counter() - t
                    status = "upstream_error"
                    self._fall_back(exc, spec, i, started=False)
                    continue
                self.upstream_s += time.perf_counter() - t
                resp.usage = self._billed(resp.usage, partial(_text_of, resp.content), True)
                self.finish = resp.stop_reason
                recorded = self._remember(resp.content)
                await self._settle(resp.usage, "ok", None)
                if recorded is not None:
                    await recorded  # the reasoning record too is durable before the answer leaves
                return resp
            raise AssertionError("unreachable: the last engine's failure is raised by _fall_back")
        except asyncio.CancelledError:
            status = "client_disconnect"  # the client went away before the answer
            raise
        finally:
            if not self.reservation.settled:
                self._settle(Usage(), status, None)

    def _fall_back(self, exc: GatewayError, spec: ModelSpec, i: int, started: bool) -> None:
        """Let the next engine take over after ``exc`` — only before the first byte, only for errors
        that allow it, only while engines remain; otherwise raise ``exc``."""
        self.error_code = exc.code
        if started or not exc.fallback_ok or i + 1 >= len(self.route.engines):
            raise exc
        self.gateway.observer.fallback(spec.id)
        log.warning("trace=%s engine=%s failed before the first byte: %s; falling back", self.trace_id, spec.id,
                    exc.message)

    def _remember(self, blocks: list[Block]) -> Awaitable[None] | None:
        calls = [b.id for b in blocks if isinstance(b, ToolCall)]
        if not calls:
            return None
        reasoning = "".join(b.text for b in blocks if isinstance(b, Thinking) and not b.redacted)
        return self.gateway.reasoning.remember(calls, reasoning)

    async def open(self) -> Event:
        """Start a streamed call and wait for its first event: a failure before any byte (every
        engine failed, or the client left) raises here and becomes an HTTP error; after this,
        :meth:`headers` are final and :meth:`stream` cannot fail before its first item."""
        events = self._run_stream()
        try:
            self._first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        self._events = events
        return self._first

    async def stream(self) -> AsyncGenerator[Event | Settled, None]:
        """After :meth:`open`: the first event, the rest as they arrive, and last a
        :class:`Settled` once the ledger entry is durable. Closing it early (the client went
        away) cancels the upstream call and settles what was delivered."""
        events, first = self._events, self._first
        if events is None or first is None:
            raise RuntimeError("Call.stream() before Call.open()")
        try:
            yield first
            async for ev in events:
                yield ev
        finally:
            await events.aclose()
        if self.settlement is not None:
            await self.settlement
        if self._recorded is not None:
            await self._recorded  # the reasoning behind its tool calls, for the next turn on any worker
        yield Settled(self.usage or Usage())

    async def _run_stream(self) -> AsyncGenerator[Event, None]:
        """Canonical events as they arrive from the first engine that answers; settles exactly
        once however the stream ends."""
        usage: Usage | None = None
        status = "client_disconnect"
        first: float | None = None
        out_parts: list[str] = []
        thinking: list[str] = []
        calls: list[str] = []
        try:
            for i, spec in enumerate(self.route.engines):
                engine = self.gateway.engines.for_model(spec.id)
                self.served = spec
                t = time.perf_counter()
                try:
                    async for ev in engine.stream(self.request_for(spec), spec, self._ctx()):
                        if first is None:
                            first = time.perf_counter()
                            self.upstream_s += first - t
                        if isinstance(ev, UsageUpdate):
                            usage = ev.usage
                        elif isinstance(ev, TextDelta):
                            out_parts.append(ev.text)
                        elif isinstance(ev, ThinkingDelta):
                            thinking.append(ev.text)
                        elif isinstance(ev, ToolCallDelta):
                            if ev.id:
                                calls.append(ev.id)
                            out_parts.append(ev.arguments)
                        elif isinstance(ev, Finish):
                            status = "ok"
                            self.finish = ev.reason
                        yield ev
                    break
                except GatewayError as exc:
                    status = "upstream_error"
                    if first is None:
                        self.upstream_s += time.perf_counter() - t
                    self._fall_back(exc, spec, i, started=first is not None)
                    status = "client_disconnect"
                    continue
            if calls:
                self._recorded = self.gateway.reasoning.remember(calls, "".join(thinking))
        finally:
            self._settle(self._billed(usage, lambda: "".join(thinking) + "".join(out_parts),
                                      first is not None or status == "ok"), status, first)


# ============================================================================ the gateway
class Gateway:
    def __init__(self, settings: Settings, auth: Authenticator, engines: EngineRegistry, meter: Meter,
                 signer: Signer, router: Router, observer: CallObserver | None = None):
        self.settings = settings
        self.observer = observer or CallObserver()  # call records, metrics, spans
        self.catalog: Catalog = settings.catalog
        self.auth = auth
        self.engines = engines
        self.meter = meter
        self.signer = signer
        self.router = router
        self.reasoning = ReasoningStore()
        core = getattr(meter, "core", None)  # the credit meter's price book, built once at start-up
        self._prices: PriceBook | None = getattr(core, "prices", None)
        if self._prices is None:  # metering off: the bound still guards what is logged as usage
            try:
                self._prices = PriceBook(self.catalog)
            except ValueError:  # bad prices fail start-up where billing is on; metering off: nothing to guard
                self._prices = None

    def billable(self, spec: ModelSpec, usage: Usage) -> bool:
        """Whether an upstream's usage can be billed as reported (its cost fits the ledger)."""
        return self._prices is None or self._prices.billable(spec.id, usage)

    async def start_call(self, req: Request, key: KeyInfo, trace_id: str, body_size: int,
                         protocol: str = "openai") -> Call:
        admitted.set(True)  # from here on the call counts itself (metrics); before, the error boundary does
        try:
            return await self._admit(req, key, trace_id, body_size, protocol)
        except GatewayError as exc:
            self.observer.refused(req, protocol, exc.code)
            raise

    async def _admit(self, req: Request, key: KeyInfo, trace_id: str, body_size: int, protocol: str) -> Call:
        t0 = time.perf_counter()
        spec = self.catalog.resolve(req.model)
        if key.models is not None and spec.id not in key.models and req.model not in key.models:
            # an allowed step-router-v1 admits whatever engine it routes to for that call
            raise PermissionDenied(f"this API key may not use model '{req.model}'; the key's administrator "
                                   "limited it to certain models")
        if spec.kind == "router":
            self.router.check_fields(req)
        req = check_capabilities(req, spec)
        with tracing.child("route"):
            route = self.router.choose(req, spec)
        engines = list(route.engines)
        kinds: set[str] | None = None
        for e in route.engines:  # [models."X"] fallbacks, after the route's own engines, each model once,
            chain = self.catalog.fallback_chain(e)  # less those lacking a modality the request uses
            if chain:
                kinds = _media_kinds(req) if kinds is None else kinds
                engines += [f for f in chain if f not in engines and kinds.issubset(f.input_modalities)]
        route.engines = engines
        served = route.engines[0]
        if spec.kind == "router":
            self.observer.routed(served.id, route.reason, route.score)
        views: dict[str, Request] | None = None
        sent = req
        if spec.kind == "router" or len(route.engines) > 1:  # each engine gets its own view
            views = {e.id: _engine_view(req, e) for e in route.engines}
            sent = views[served.id]
        elif served is not spec:
            req = sent = check_capabilities(req, served)
        if self.reasoning.shared:
            unknown = self.reasoning.unknown(req.messages)
            if unknown:  # tool turns answered by another worker, or before a restart
                await self.reasoning.prefetch(unknown)
        with tracing.child("reserve"):
            res = await self.meter.reserve(key, served, sent, trace_id, estimate_request(sent, body_size))
        return Call(self, req, spec, route, key, res, trace_id, t0, views=views, protocol=protocol)

    async def aclose(self) -> None:
        await self.engines.aclose()


def _text_of(blocks: list[Block]) -> str:
    """What a response produced, for a local count: text, reasoning and tool-call arguments."""
    return "".join(b.arguments if isinstance(b, ToolCall) else b.text for b in blocks
                   if isinstance(b, (Text, Thinking, ToolCall)))


def _engine_view(req: Request, engine: ModelSpec) -> Request:
    """What a router engine receives: the client's effort and thinking resolved for that
    engine exactly as for a model asked for by name, and ``max_tokens`` capped at the engine's
    own maximum output (the router's field rule allows 250K; step-3.5-flash writes at most 64K)."""
    effort, thinking = efforts.resolve(engine, req.effort, req.thinking, req.thinking_budget)
    max_tokens = req.max_tokens if req.max_tokens is None else min(req.max_tokens, engine.max_output)
    if effort != req.effort or thinking is not req.thinking or max_tokens != req.max_tokens:
        return replace(req, effort=effort, thinking=thinking, max_tokens=max_tokens)
    return req


__all__ = ["Call", "Gateway", "InvalidRequest", "Settled", "check_capabilities"]

"""One call from start to finish, in order:

    auth → catalog and capability rules → router → credit reservation
         → engine (complete or stream of canonical events) → settlement

Protocol codecs sit on either side (``api/``); this module never sees wire JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial

from .auth import Authenticator
from .billing.meter import Meter, Outcome, Reservation
from .billing.pricing import PriceBook
from .catalog import Catalog, ModelSpec
from .engines.base import CallContext
from .engines.registry import EngineRegistry
from .errors import GatewayError, InvalidRequest, UnsupportedContent
from .logs import call_line
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
    """Reject what the model cannot take; resolve effort and thinking contradictions."""
    for kind in _media_kinds(req):
        if kind == "document":
            raise UnsupportedContent(f"document input is not supported by model {spec.id}; "
                                     "send the document's text instead")
        if kind not in spec.input_modalities:
            raise UnsupportedContent(f"model {spec.id} does not accept {kind} input")
    effort = spec.check_effort(req.effort)
    if req.thinking is False:
        effort = None  # thinking disabled wins over an effort hint
    max_tokens = req.max_tokens
    if max_tokens is not None and max_tokens > spec.max_output:
        max_tokens = spec.max_output
    if effort != req.effort or max_tokens != req.max_tokens:
        req = replace(req, effort=effort, max_tokens=max_tokens)
    return req


# ============================================================================ the call
@dataclass(slots=True)
class Call:
    gateway: Gateway
    req: Request
    spec: ModelSpec  # what the client asked for
    route: RouteChoice
    key: KeyInfo
    reservation: Reservation
    trace_id: str
    t0: float
    served: ModelSpec | None = None
    settlement: object = None  # the meter's durability awaitable, set when the stream settles
    upstream_s: float = 0.0  # time spent waiting on upstreams (to the first event, for streams)
    usage: Usage | None = None  # a stream's final (billed) usage, set when it settles

    def overhead_ms(self, arrived: float) -> str:
        """The gateway's own time so far: wall time since arrival minus upstream waiting."""
        return f"{max(0.0, (time.perf_counter() - arrived - self.upstream_s) * 1000):.3f}"

    @property
    def served_model(self) -> ModelSpec:
        return self.served or self.route.engines[0]

    def _ctx(self) -> CallContext:
        return CallContext(self.trace_id, self.gateway.reasoning.restore)

    def _settle(self, usage: Usage, status: str, first_byte: float | None) -> object:
        now = time.perf_counter()
        call_line(log, f"trace={self.trace_id} account={self.key.account_name} key={self.key.key_id} "
                       f"model={self.spec.id} served={self.served_model.id} status={status} in={usage.input} "
                       f"cache={usage.cache_read} out={usage.output} ms={(now - self.t0) * 1000:.1f}")
        outcome = Outcome(
            served=self.served_model, usage=usage, status=status, route_score=self.route.score,
            first_byte_ms=None if first_byte is None else (first_byte - self.t0) * 1000,
            total_ms=(now - self.t0) * 1000,
        )
        return self.gateway.meter.settle(self.reservation, outcome)

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
        last: GatewayError | None = None
        try:
            for spec in self.route.engines:
                engine = self.gateway.engines.for_model(spec.id)
                self.served = spec
                t = time.perf_counter()
                try:
                    resp = await engine.complete(self.req, spec, self._ctx())
                except GatewayError as exc:
                    self.upstream_s += time.perf_counter() - t
                    if not exc.fallback_ok:
                        raise
                    last = exc
                    log.warning("trace=%s engine=%s failed: %s", self.trace_id, spec.id, exc.message)
                    continue
                self.upstream_s += time.perf_counter() - t
                resp.usage = self._billed(resp.usage, partial(_text_of, resp.content), True)
                self._remember(resp.content)
                await self._settle(resp.usage, "ok", None)
                return resp
        except asyncio.CancelledError:
            if not self.reservation.settled:  # the client went away before the answer
                self._settle(Usage(), "client_disconnect", None)
            raise
        except BaseException:
            if not self.reservation.settled:
                self._settle(Usage(), "error", None)
            raise
        self._settle(Usage(), "upstream_error", None)
        assert last is not None
        raise last

    def _remember(self, blocks: list) -> None:
        calls = [b.id for b in blocks if isinstance(b, ToolCall)]
        if calls:
            reasoning = "".join(b.text for b in blocks if isinstance(b, Thinking) and not b.redacted)
            self.gateway.reasoning.remember(calls, reasoning)

    async def events(self) -> AsyncIterator[Event]:
        """Canonical events as they arrive; settles exactly once however the stream ends."""
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
                    async for ev in engine.stream(self.req, spec, self._ctx()):
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
                        yield ev
                    break
                except GatewayError as exc:
                    if not exc.fallback_ok:
                        status = "upstream_error"
                        raise
                    # Before the first byte another engine may take over; after it, the error goes out.
                    if first is None:
                        self.upstream_s += time.perf_counter() - t
                    if first is None and i + 1 < len(self.route.engines):
                        log.warning("trace=%s engine=%s failed before first byte: %s; falling back",
                                    self.trace_id, spec.id, exc.message)
                        continue
                    status = "upstream_error"
                    raise
            if calls:
                self.gateway.reasoning.remember(calls, "".join(thinking))
        finally:
            usage = self._billed(usage, lambda: "".join(thinking) + "".join(out_parts),
                                 first is not None or status == "ok")
            self.usage = usage
            self.settlement = self._settle(usage, status, first)


# ============================================================================ the gateway
class Gateway:
    def __init__(self, settings: Settings, auth: Authenticator, engines: EngineRegistry, meter: Meter,
                 signer: Signer, router: Router):
        self.settings = settings
        self.catalog: Catalog = settings.catalog
        self.auth = auth
        self.engines = engines
        self.meter = meter
        self.signer = signer
        self.router = router
        self.reasoning = ReasoningStore()
        try:
            self._prices: PriceBook | None = PriceBook(self.catalog)
        except ValueError:  # bad prices fail start-up where billing is on; metering off: nothing to guard
            self._prices = None

    def billable(self, spec: ModelSpec, usage: Usage) -> bool:
        """Whether an upstream's usage can be billed as reported (its cost fits the ledger)."""
        return self._prices is None or spec.id not in self._prices.base or self._prices.billable(spec.id, usage)

    async def start_call(self, req: Request, key: KeyInfo, trace_id: str, body_size: int) -> Call:
        t0 = time.perf_counter()
        spec = self.catalog.resolve(req.model)
        if spec.kind == "router":
            self.router.check_fields(req)
        req = check_capabilities(req, spec)
        route = self.router.choose(req, spec)
        served = route.engines[0]
        if served is not spec:
            req = check_capabilities(req, served) if spec.kind != "router" else _engine_view(req, served)
        if self.reasoning.shared:
            unknown = self.reasoning.unknown(req.messages)
            if unknown:  # tool turns answered by another worker, or before a restart
                await self.reasoning.prefetch(unknown)
        res = await self.meter.reserve(key, served, req, trace_id, estimate_request(req, body_size))
        return Call(self, req, spec, route, key, res, trace_id, t0)

    async def aclose(self) -> None:
        await self.engines.aclose()


def _text_of(blocks: list[Block]) -> str:
    """What a response produced, for a local count: text, reasoning and tool-call arguments."""
    return "".join(b.arguments if isinstance(b, ToolCall) else b.text for b in blocks
                   if isinstance(b, (Text, Thinking, ToolCall)))


def _engine_view(req: Request, engine: ModelSpec) -> Request:
    """What a router engine receives: effort only where that engine supports it."""
    if req.effort is not None and req.effort not in engine.efforts:
        return replace(req, effort=None)
    return req


__all__ = ["Call", "Gateway", "InvalidRequest", "check_capabilities"]

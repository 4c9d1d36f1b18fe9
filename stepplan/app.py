"""The ASGI application: routes, the error boundary, and start-up/shut-down wiring."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import openai as openai_api
from .api import openai_responses as responses_api
from .api.common import HEADER_MAP, error_response, internal_error, is_anthropic_path, new_trace_id
from .api.openapi import document_bytes as openapi_document_bytes
from .api.responses import JSONResponse
from .auth import Authenticator
from .billing.meter import Meter, NullMeter
from .engines.registry import EngineRegistry
from .errors import GatewayError, InvalidRequest, NotFound, Overloaded
from .logs import flush as flush_logs
from .observability import tracing
from .observability.calls import CallObserver
from .observability.metrics import CONTENT_TYPE, admitted
from .pipeline import Gateway
from .protocols import limits as input_limits
from .reasoning import Signer
from .routing.route import Router
from .settings import Settings, load_settings
from .store.db import make_engine, sessionmaker
from .store.meta import signing_secret

log = logging.getLogger("stepplan")

GC_YOUNG_THRESHOLD = 20_000  # allocations between collections of the youngest generation (CPython: 700)

Handler = Callable[[HTTPRequest], Awaitable[Response]]


# Model-call routes and the client protocol each speaks (the `protocol` metrics label): a new
# protocol is one line here (and ``protocol=`` in its handler's ``start_call``).
MODEL_ROUTES: dict[str, str] = {
    "/step_plan/v1/chat/completions": "openai",
    "/step_plan/v1/messages": "anthropic",
    "/step_plan/v1/responses": "responses",
}


def guarded(handler: Handler, protocol: str | None = None) -> Handler:
    """The error boundary: every failure leaves in the caller's protocol, never as a bare 500.
    On a model route (``protocol`` set), a call refused before ``start_call`` admitted it (a bad
    key, a malformed body) is counted here; after that, the call counts itself."""

    async def run(request: HTTPRequest) -> Response:
        trace = request.scope["stepplan.trace_id"]
        path = request.scope["path"]
        anthropic = is_anthropic_path(path)
        try:
            return await handler(request)
        except GatewayError as exc:
            log.log(logging.WARNING if exc.status >= 500 else logging.INFO, "trace=%s %s %s -> %d %s: %s", trace,
                    request.method, path, exc.status, exc.code, exc.message)
            if protocol is not None and not admitted.get():
                _observer(request).rejected(protocol, exc.code)
            return error_response(exc, trace, anthropic)
        except Exception:
            log.exception("trace=%s unhandled error on %s", trace, path)
            if protocol is not None and not admitted.get():
                _observer(request).rejected(protocol, "internal_error")
            err = internal_error(trace)
            return error_response(err, trace, anthropic)

    return run


def _observer(request: HTTPRequest) -> CallObserver:
    gateway = getattr(request.app.state, "gateway", None)
    return gateway.observer if gateway is not None else CallObserver()


class TraceAndLimit:
    """Gives every request a trace id (``X-Trace-Id`` on every response) and sheds load
    with a 503 once ``max_concurrency`` requests are in flight."""

    def __init__(self, app: ASGIApp, max_concurrency: int):
        self.app = app
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if tracing.enabled:
            await self._traced(scope, receive, send)
            return
        trace = new_trace_id()
        scope["stepplan.trace_id"] = trace
        scope["stepplan.t0"] = time.perf_counter()
        header = (b"x-trace-id", trace.encode())

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self._serve(scope, receive, send_with_trace, trace)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tracing on: a SERVER span around the request (child of the client's ``traceparent``);
        ``X-Trace-Id`` is its trace id, the request id (ledger, logs) is unique per request."""
        t0 = time.perf_counter()
        span, token, trace_hex, request_id = tracing.start_server_span(scope)
        scope["stepplan.trace_id"] = request_id
        scope["stepplan.t0"] = t0
        header = (b"x-trace-id", trace_hex.encode())
        status: int | None = None

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        error: BaseException | None = None
        try:
            await self._serve(scope, receive, send_with_trace, request_id)
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.end_server_span(span, token, status, error)

    async def _serve(self, scope: Scope, receive: Receive, send_with_trace: Send, trace: str) -> None:
        if self.in_flight >= self.max_concurrency:
            err = Overloaded("the gateway is at its concurrency limit; retry shortly", headers={"retry-after": "1"})
            await error_response(err, trace, is_anthropic_path(scope["path"]))(scope, receive, send_with_trace)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            self.in_flight -= 1


# Model calls: served by HotPath straight from the route table (same handlers, no second registration).
HOT_PATHS = frozenset({"/step_plan/v1/chat/completions", "/step_plan/v1/messages", "/step_plan/v1/responses"})


class HotPath:
    """Model calls skip Starlette's router and middleware stack: an exact path lookup, then
    the handler (already wrapped by the error boundary). Everything else goes to Starlette.
    The handlers are the ones ``routes()`` registered for :data:`HOT_PATHS` (POST)."""

    def __init__(self, app: Starlette):
        self.app = app
        self.routes: dict[str, Handler] = {
            r.path: r.endpoint for r in app.routes
            if isinstance(r, Route) and r.path in HOT_PATHS and "POST" in (r.methods or ())}
        missing = HOT_PATHS - set(self.routes)
        if missing:
            raise RuntimeError(f"hot paths without a POST route: {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                scope["app"] = self.app  # handlers reach the gateway through request.app.state
                response = await handler(HTTPRequest(scope, receive))
                scope.pop(HEADER_MAP, None)  # read while the call was admitted; a stream need not hold it
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def healthz(request: HTTPRequest) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: HTTPRequest) -> Response:
    """Readiness: database reachable, migrations current, ledger writer healthy, router weights
    loaded; 503 naming the failing checks (``/healthz`` stays liveness)."""
    from .observability.health import readiness

    state = request.app.state
    checks = await readiness(state.sessions, state.gateway.meter, state.gateway.router)
    failed = [c.name for c in checks if not c.ok]
    body = {"status": "not ready" if failed else "ready", "failed": failed,
            "checks": {c.name: c.as_dict() for c in checks}}
    return JSONResponse(body, status_code=503 if failed else 200)


async def metrics_endpoint(request: HTTPRequest) -> Response:
    """Prometheus exposition of every worker's metrics; admin token required on this port."""
    from .api.admin import _guard

    metrics = getattr(request.app.state, "metrics", None)
    if metrics is None:
        raise NotFound(f"no route for {request.method} {request.url.path}")
    await _guard(request)
    return Response(metrics.render(), media_type=CONTENT_TYPE)


async def root(request: HTTPRequest) -> Response:
    if request.method == "HEAD":
        return Response(status_code=200)
    return JSONResponse({"service": "stepplan", "status": "ok"})


async def not_found(request: HTTPRequest, exc: Exception) -> Response:
    trace = request.scope["stepplan.trace_id"]
    anthropic = is_anthropic_path(request.url.path)
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        err: GatewayError = InvalidRequest(f"method {request.method} is not allowed on {request.url.path}")
        resp = error_response(err, trace, anthropic)
        resp.status_code = 405
        return resp
    return error_response(NotFound(f"no route for {request.method} {request.url.path}"), trace, anthropic)


def routes(settings: Settings | None = None) -> list[Route]:
    from .api import admin as admin_api
    from .api import anthropic as anthropic_api
    from .api import openapi as openapi_api
    from .api import usage as usage_api

    r = [
        Route("/healthz", guarded(healthz), methods=["GET"]),
        Route("/readyz", guarded(readyz), methods=["GET"]),
        Route("/metrics", guarded(metrics_endpoint), methods=["GET"]),
        Route("/", guarded(root), methods=["GET", "HEAD"]),
        Route("/step_plan", guarded(root), methods=["GET", "HEAD"]),
        Route("/step_plan/", guarded(root), methods=["GET", "HEAD"]),
        Route("/step_plan/v1/chat/completions", guarded(openai_api.chat_completions, "openai"), methods=["POST"]),
        Route("/step_plan/v1/models", guarded(openai_api.list_models), methods=["GET"]),
        Route("/step_plan/v1/models/{model:path}", guarded(openai_api.get_model), methods=["GET"]),
    ]
    r += [Route(p, guarded(h, MODEL_ROUTES.get(p)), methods=m) for p, h, m in anthropic_api.ROUTES]
    r += [Route(p, guarded(h, MODEL_ROUTES.get(p)), methods=m) for p, h, m in responses_api.ROUTES]
    r += [Route(p, guarded(h), methods=m) for p, h, m in usage_api.ROUTES]
    r += [Route(p, guarded(h), methods=m) for p, h, m in openapi_api.ROUTES]
    r += [Route(p, guarded(h), methods=m) for p, h, m in admin_api.ROUTES]
    if settings is None or settings.console.enabled:
        from .console import routes as console_routes  # its own error pages (HTML): not `guarded`

        r += [Route(p, h, methods=m) for p, h, m in console_routes.ROUTES]
    return r


def build_meter(settings: Settings, sessions: Any) -> Meter:
    if not settings.billing.get("enabled", True):
        return NullMeter()
    from .billing.clock import Clock
    from .billing.credit_meter import CreditMeter

    return CreditMeter(settings, sessions, clock=Clock(settings.clock_offset))


def build_metrics(settings: Settings) -> Any:
    """This process's metrics (None with ``[server] metrics = false``)."""
    if not settings.metrics:
        return None
    from .observability.metrics import Metrics

    def upstream_of(model_id: str) -> str:
        return settings.upstream_for(model_id).name

    return Metrics(settings.catalog.models, upstream_of, account_labels=settings.metrics_account_labels)


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> ASGIApp:
    settings = settings or load_settings()
    from .engines import _http
    from .logs import add_secrets

    add_secrets(settings.secrets())
    input_limits.configure(input_limits.InputLimits(
        max_messages=settings.server.max_messages, max_tools=settings.server.max_tools,
        max_content_parts=settings.server.max_content_parts, max_string_chars=settings.server.max_string_chars))
    if not tracing.enabled and tracing.configured():
        tracing.setup()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        if migrate:
            from .store.migrate import migrate as run_migrations

            await run_migrations(engine)
        sessions = sessionmaker(engine)
        secret = settings.secret.encode() if settings.secret else await signing_secret(sessions)
        from .billing.clock import Clock

        auth = Authenticator(sessions, clock=Clock(settings.clock_offset),
                             trusted_proxies=settings.server.trusted_proxies, redis_url=settings.redis_url)
        await auth.start()
        meter = build_meter(settings, sessions)
        await meter.start()
        metrics = build_metrics(settings)
        if metrics is not None:
            _http.set_observer(metrics)
            if hasattr(meter, "gauges"):
                meter.observer = metrics  # type: ignore[attr-defined]
                metrics.gauge_sources.append(meter.gauges)
            metrics.requests_in_flight = lambda: outer.in_flight
            metrics.start()
        engines = EngineRegistry(settings)
        engines.preload()  # an in-process model starts loading in the background
        router = Router(settings.catalog, settings.router)
        router.preload()  # the routing weights load now, not on the first routed call
        gateway = Gateway(settings, auth, engines, meter, Signer(secret), router, CallObserver(metrics))
        await gateway.reasoning.start(sessions)
        app.state.gateway = gateway
        app.state.responses = responses_api.ResponsesState(settings, sessions, secret)
        app.state.sessions = sessions
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.openapi = openapi_document_bytes()  # built once, served as bytes
        # Everything loaded so far (modules, the catalog, routing trees, SQLAlchemy's caches) lives
        # as long as the process: out of the cycle collector's sight, so a full collection scans
        # only what calls made (docs/performance.md: full collections were ~5 % of a call's CPU).
        gc.collect()
        gc.freeze()
        # A call allocates a few hundred tracked objects, and 32 calls in flight keep thousands alive:
        # at the default threshold (700) the youngest generation was collected every couple of calls,
        # scanning the same in-flight objects again each time (docs/performance.md, "Sixth session").
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            try:
                if metrics is not None:
                    await metrics.stop()
                    _http.set_observer(None)
                await gateway.reasoning.stop()
                await meter.stop()
                await auth.stop()
                await gateway.aclose()
                await engine.dispose()
            finally:
                flush_logs()  # every call's record is written before the process ends (logs.flush)

    app = Starlette(routes=routes(settings), lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    outer = TraceAndLimit(HotPath(app), max_concurrency=settings.max_concurrency)
    return outer


def app_factory() -> ASGIApp:
    """Entry point for ``uvicorn --factory stepplan.app:app_factory`` (used by --workers N)."""
    from .logs import setup_logging

    settings = load_settings()  # STEPPLAN_CONFIG and STEPPLAN_LOG_LEVEL, as `stepplan serve` set them
    setup_logging(settings.log_level, settings.log_format)  # worker processes start with a fresh logging
    return create_app(settings, migrate=False)


__all__ = ["app_factory", "create_app"]

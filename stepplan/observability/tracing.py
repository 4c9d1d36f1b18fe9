"""OpenTelemetry traces, optional (``pip install 'stepplan[otel]'``).

Off unless configured with the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``; ``OTEL_SDK_DISABLED=true``
wins), or a test installs a tracer provider with :func:`setup`. While off, every hook is one
check of the module-level :data:`enabled` flag: no span, no context, no header is touched.

While on: one SERVER span per HTTP request (its parent is the client's W3C ``traceparent`` when
one is sent), children ``reserve``, ``route``, one ``upstream`` span per HTTP attempt (whose
context is sent upstream as ``traceparent``) and ``settle`` (until the ledger entry is durable);
``gen_ai.*`` attributes on the server span. ``X-Trace-Id`` is the trace id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("stepplan.tracing")

enabled: bool = False
_tracer: Any = None
_provider: Any = None
_propagator: Any = None


def configured(env: dict[str, str] | None = None) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(provider: Any = None) -> bool:
    """Turn tracing on: with ``provider`` (tests: an SDK provider with an in-memory exporter), or
    from the environment (an OTLP exporter: HTTP/protobuf unless ``OTEL_EXPORTER_OTLP_PROTOCOL``
    says grpc). Returns whether tracing is on; never raises for a missing package."""
    global enabled, _tracer, _provider, _propagator
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.warning("OpenTelemetry is configured but not installed: pip install 'stepplan[otel]'; tracing is off")
        return False
    if provider is None:
        try:
            provider = _provider_from_env()
        except ImportError as exc:
            log.warning("OpenTelemetry exporter unavailable (%s): pip install 'stepplan[otel]'; tracing is off", exc)
            return False
    _provider = provider
    _tracer = provider.get_tracer("stepplan")
    _propagator = TraceContextTextMapPropagator()
    enabled = True
    return True


def _provider_from_env() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "stepplan")})
    provider = TracerProvider(resource=resource)
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: Any
    if kind == "console":
        exporter = ConsoleSpanExporter()
    elif os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").startswith("grpc"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def shutdown() -> None:
    global enabled, _tracer, _provider
    if _provider is not None and hasattr(_provider, "shutdown"):
        _provider.shutdown()
    enabled, _tracer, _provider = False, None, None


# ============================================================================ server spans
def start_server_span(scope: MutableMapping[str, Any]) -> tuple[Any, Any, str, str]:
    """The request's SERVER span, made current: ``(span, context token, trace id hex, request id)``.
    The request id (ledger, logs, error bodies) is the trace id, or, when the client sent its own
    ``traceparent`` (so several requests share a trace), the trace id followed by this span's id."""
    from opentelemetry import context, trace

    carrier: dict[str, str] = {}
    for k, v in scope.get("headers", ()):
        if k in (b"traceparent", b"tracestate"):
            carrier[k.decode()] = v.decode("latin-1")
    parent = _propagator.extract(carrier) if carrier else None
    method, path = scope.get("method", "GET"), scope.get("path", "/")
    span = _tracer.start_span(f"{method} {path}", context=parent, kind=trace.SpanKind.SERVER,
                              attributes={"http.request.method": method, "url.path": path})
    sc = span.get_span_context()
    trace_hex = format(sc.trace_id, "032x")
    joined = parent is not None and trace.get_current_span(parent).get_span_context().is_valid
    request_id = f"{trace_hex}{sc.span_id:016x}" if joined else trace_hex
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token, trace_hex, request_id


def end_server_span(span: Any, token: Any, status: int | None, error: BaseException | None = None) -> None:
    from opentelemetry import context, trace

    try:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
        span.end()
    finally:
        context.detach(token)


def current_span() -> Any:
    from opentelemetry import trace

    return trace.get_current_span()


# ============================================================================ child spans
@contextmanager
def _child(name: str, attributes: dict[str, Any] | None) -> Iterator[Any]:
    from opentelemetry import trace

    span = _tracer.start_span(name, attributes=attributes)  # parent: the current (server) span
    try:
        yield span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()


def child(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A child span of the current span for a ``with`` block (not made current, so it is safe
    around ``await``); while tracing is off, a shared no-op context."""
    return _child(name, attributes) if enabled else _NULL


def start_child(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A child span of the current span that the caller ends (upstream attempts)."""
    return _tracer.start_span(name, attributes=attributes)


def traceparent(span: Any) -> str:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def fail(span: Any, message: str) -> None:
    from opentelemetry import trace

    span.set_status(trace.Status(trace.StatusCode.ERROR, message[:200]))


def settle_span(durable: Awaitable[None], attributes: dict[str, Any]) -> None:
    """A ``settle`` span from now until the ledger entry is durable (the meter's future)."""
    span = _tracer.start_span("settle", attributes=attributes)
    add = getattr(durable, "add_done_callback", None)
    if add is None:
        span.end()
        return
    add(lambda _f: span.end())


__all__ = ["child", "configured", "enabled", "setup", "start_server_span"]

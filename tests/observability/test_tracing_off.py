"""Tracing off (no OTEL_* variables): no span, no traceparent upstream, stepplan's own trace ids.
(Its own module: the traced gateway of test_tracing.py turns tracing on for that whole module.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stepplan.observability import tracing
from tests.conftest import make_gateway
from tests.fakes.upstream import FakeUpstream, free_port
from tests.observability.test_tracing import CLIENT_SPAN, CLIENT_TRACE, MODEL, InProcessGateway


def test_tracing_off_creates_no_span(tmp_path: Path, fake: FakeUpstream) -> None:
    """Off (no OTEL_* variables): the same in-process gateway produces no span and sends no traceparent."""
    from stepplan.app import create_app
    from stepplan.settings import load_settings

    assert not tracing.enabled
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry import trace

    trace.set_tracer_provider(provider)  # even a global provider is not used while stepplan's tracing is off
    gw = make_gateway(tmp_path / "off", fake)
    key = gw.new_key("untraced")
    server = InProcessGateway(create_app(load_settings(gw.config, env={})), free_port())
    server.start()
    try:
        r = httpx.post(f"http://127.0.0.1:{server.port}/step_plan/v1/chat/completions", timeout=30,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"authorization": f"Bearer {key}", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert r.status_code == 200
        assert len(r.headers["x-trace-id"]) == 20  # stepplan's own ids
        assert "traceparent" not in {k.lower() for k in fake.last.headers}
    finally:
        server.stop()
    assert exporter.get_finished_spans() == ()
    assert not tracing.enabled

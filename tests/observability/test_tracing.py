"""OpenTelemetry traces with the SDK's in-memory exporter (no network): the gateway runs in this
process (uvicorn in a thread) so the test's tracer provider sees its spans."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stepplan.observability import tracing
from tests.conftest import make_gateway
from tests.fakes.upstream import FakeUpstream, free_port

MODEL = "step-3.5-flash"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class InProcessGateway:
    def __init__(self, app: Any, port: int):
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio",
                                                    lifespan="on", log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "in-process gateway did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[tuple[str, str, Any]]:
    from stepplan.app import create_app
    from stepplan.settings import load_settings

    gw = make_gateway(tmp_path_factory.mktemp("traced"), fake)
    key = gw.new_key("tracer")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.setup(provider)
    app = create_app(load_settings(gw.config, env={}))
    server = InProcessGateway(app, free_port())
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", key, exporter
    finally:
        server.stop()
        tracing.shutdown()


def _wait_spans(exporter: InMemorySpanExporter, trace_id: int, names: set[str]) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_client_traceparent_is_the_parent_and_goes_upstream(traced: tuple[str, str, Any],
                                                            fake: FakeUpstream) -> None:
    url, key, exporter = traced
    r = httpx.post(f"{url}/step_plan/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                   headers={"authorization": f"Bearer {key}", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert r.status_code == 200, r.text
    assert r.headers["x-trace-id"] == CLIENT_TRACE
    spans = _wait_spans(exporter, int(CLIENT_TRACE, 16), {"chat step-3.5-flash", "route", "reserve", "upstream",
                                                          "settle"})
    by_name = {s.name: s for s in spans}
    server = by_name["chat step-3.5-flash"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == int(CLIENT_SPAN, 16)
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.provider.name"] == "fake"
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 7
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("end_turn",)
    assert a["http.response.status_code"] == 200
    for child in ("route", "reserve", "upstream", "settle"):
        assert by_name[child].parent.span_id == server.context.span_id, child
    # the upstream got the attempt span's context as its traceparent
    sent = fake.last.headers.get("traceparent") or fake.last.headers.get("Traceparent")
    up = by_name["upstream"]
    assert sent == f"00-{CLIENT_TRACE}-{up.context.span_id:016x}-01"
    # a shared client trace: the request id (ledger, error bodies) stays unique: trace id + span id
    assert a["stepplan.request_id"] == f"{CLIENT_TRACE}{server.context.span_id:016x}"


def test_without_traceparent_the_trace_id_is_the_request_id(traced: tuple[str, str, Any],
                                                            fake: FakeUpstream) -> None:
    url, key, exporter = traced
    r = httpx.post(f"{url}/step_plan/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and "[DONE]" in r.text
    trace_id = r.headers["x-trace-id"]
    assert len(trace_id) == 32
    spans = _wait_spans(exporter, int(trace_id, 16), {f"chat {MODEL}", "settle"})
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert server.parent is None
    assert server.attributes["stepplan.request_id"] == trace_id
    assert server.attributes["stepplan.stream"] is True
    assert f"chatcmpl-{trace_id}" in r.text  # the response id carries the same id


def test_upstream_failure_marks_the_spans(traced: tuple[str, str, Any], fake: FakeUpstream) -> None:
    url, key, exporter = traced
    for _ in range(2):
        fake.queue_json({"error": {"message": "down"}}, status=500)
    r = httpx.post(f"{url}/step_plan/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 502
    trace_id = int(r.headers["x-trace-id"], 16)
    assert r.json()["error"]["trace_id"] == r.headers["x-trace-id"]
    spans = _wait_spans(exporter, trace_id, {f"chat {MODEL}", "upstream"})
    attempts = [s for s in spans if s.name == "upstream"]
    assert len(attempts) == 2  # one retry
    assert [s.attributes["stepplan.attempt"] for s in attempts] == [1, 2]
    assert all(not s.status.is_ok for s in attempts)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert server.attributes["error.type"] == "upstream_error"
    assert server.attributes["http.response.status_code"] == 502

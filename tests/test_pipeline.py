"""``pipeline.Call`` in-process: a real Gateway (catalog rules, router, engines) over scripted
transports, with a recording meter in place of the credit meter — no sockets, no server.

What it pins down: a call settles exactly once however it ends (answer, upstream error,
client gone mid-stream), with the usage the upstream gave last or a local count; a stream
ends with ``Settled`` only after the settlement is durable; fallback to another engine
happens only before the first byte; headers name the effort and the routed engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest

from stepplan.billing.meter import Outcome, Reservation
from stepplan.catalog import ModelSpec
from stepplan.engines.anthropic import AnthropicEngine
from stepplan.engines.openai import OpenAIEngine
from stepplan.engines.registry import EngineRegistry
from stepplan.engines.transport import HTTPError
from stepplan.errors import UpstreamError
from stepplan.pipeline import Gateway, Settled
from stepplan.protocols.canonical import Finish, Message, Request, Text, TextDelta, UsageUpdate
from stepplan.reasoning import Signer
from stepplan.routing.route import Router
from stepplan.settings import Settings, UpstreamConfig, load_settings
from stepplan.store.accounts import KeyInfo

from .engines.scripted import Scripted, ScriptedTransport, json_answer, sse_answer

KEY = KeyInfo(1, 1, "acct")


@dataclass
class RecordingMeter:
    """Stands in for the credit meter (this tests the pipeline, not billing): records every
    settlement and makes it durable only when the test says so."""

    settled: list[tuple[str, Outcome]] = field(default_factory=list)
    durable: asyncio.Event = field(default_factory=asyncio.Event)

    async def reserve(self, key: KeyInfo, spec: ModelSpec, req: Request, request_id: str,
                      input_tokens: int) -> Reservation:
        return Reservation(request_id, key, req.model)

    def settle(self, res: Reservation, outcome: Outcome) -> Awaitable[None]:
        assert not res.settled, "settled twice"
        res.settled = True
        self.settled.append((res.request_id, outcome))
        return asyncio.ensure_future(self.durable.wait())

    def headers(self, res: Reservation) -> dict[str, str]:
        return {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def settings() -> Settings:
    s = load_settings(None, env={})
    s.upstreams = {"oa": UpstreamConfig("oa", "openai", base_url="http://oa.invalid/v1", api_key="k"),
                   "an": UpstreamConfig("an", "anthropic", base_url="http://an.invalid/v1", api_key="k")}
    s.default_upstream = "oa"
    return s


def gateway(oa: ScriptedTransport, an: ScriptedTransport | None = None) -> tuple[Gateway, RecordingMeter]:
    s = settings()
    factories: dict[str, Any] = {"openai": lambda up: OpenAIEngine(up, oa),
                                 "anthropic": lambda up: AnthropicEngine(up, an or ScriptedTransport())}
    meter = RecordingMeter()
    gw = Gateway(s, auth=None, engines=EngineRegistry(s, factories), meter=meter,  # type: ignore[arg-type]
                 signer=Signer(b"secret"), router=Router(s.catalog, s.router))
    return gw, meter


def req(model: str = "step-3.5-flash", **kw: Any) -> Request:
    return Request(model=model, messages=[Message("user", [Text("hello there")])], **kw)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({"content": " you"}),
          chunk({}, "stop"), {"choices": [], "usage": USAGE}, b"data: [DONE]\n\n"]


async def test_a_complete_call_settles_once_with_the_upstream_usage() -> None:
    oa = ScriptedTransport(json_answer({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hi"}}], "usage": USAGE}))
    gw, meter = gateway(oa)
    meter.durable.set()
    call = await gw.start_call(req(), KEY, "t-1", 100)
    resp = await call.complete()
    assert [b.text for b in resp.content if isinstance(b, Text)] == ["Hi"]
    [(rid, outcome)] = meter.settled
    assert rid == "t-1" and outcome.status == "ok" and outcome.served.id == "step-3.5-flash"
    assert (outcome.usage.input, outcome.usage.output, outcome.usage.known) == (5, 2, True)


async def test_a_stream_ends_with_settled_only_once_the_settlement_is_durable() -> None:
    gw, meter = gateway(ScriptedTransport(sse_answer(STREAM)))
    call = await gw.start_call(req(stream=True), KEY, "t-2", 100)
    first = await call.open()
    assert isinstance(first, TextDelta | UsageUpdate | Finish)
    seen: list[Any] = []
    stream = call.stream()

    async def consume() -> None:
        async for item in stream:
            seen.append(item)

    task = asyncio.create_task(consume())
    for _ in range(100):  # every upstream event goes out before the settlement is durable…
        await asyncio.sleep(0)
        if any(isinstance(x, Finish) for x in seen):
            break
    assert meter.settled and not task.done() and not any(isinstance(x, Settled) for x in seen)
    meter.durable.set()  # …and Settled only after it
    await asyncio.wait_for(task, 5)
    assert isinstance(seen[-1], Settled) and seen[-1].usage.output == 2
    assert "".join(x.text for x in seen if isinstance(x, TextDelta)) == "Hi you"
    assert len(meter.settled) == 1 and meter.settled[0][1].status == "ok"


async def test_a_client_leaving_mid_stream_is_settled_for_what_was_delivered() -> None:
    body = [chunk({"role": "assistant", "content": ""}), *(chunk({"content": " hello"}) for _ in range(10)),
            chunk({}, "stop"), {"choices": [], "usage": USAGE}, b"data: [DONE]\n\n"]
    gw, meter = gateway(ScriptedTransport(sse_answer(body)))
    meter.durable.set()
    call = await gw.start_call(req(stream=True), KEY, "t-3", 100)
    await call.open()
    stream = call.stream()
    n = 0
    async for item in stream:
        if isinstance(item, TextDelta):
            n += 1
            if n == 3:
                break
    await stream.aclose()  # the client went away
    [(_, outcome)] = meter.settled
    assert outcome.status == "client_disconnect"
    assert outcome.usage.known is False and outcome.usage.output >= 3  # counted here, at least what left


async def test_an_engine_failure_before_the_first_byte_falls_back_and_bills_the_engine_that_served() -> None:
    # step-router-v1 sends a hard prompt to deepseek-v4-pro first; both of its attempts fail with 503
    fail = Scripted(503, {"content-type": "application/json"}, [b'{"error": {"message": "busy"}}'])
    oa = ScriptedTransport(fail, fail, fail, sse_answer(STREAM))
    gw, meter = gateway(oa)
    meter.durable.set()
    hard = "Prove that there are infinitely many primes, then derive the prime number theorem " * 20
    r = Request(model="step-router-v1", messages=[Message("user", [Text(hard)])], stream=True)
    call = await gw.start_call(r, KEY, "t-4", len(hard))
    engines = [e.id for e in call.route.engines]
    if engines[0] != "deepseek-v4-pro":
        pytest.skip(f"the router chose {engines[0]} for the hard prompt")
    await call.open()
    items = [x async for x in call.stream()]
    assert isinstance(items[-1], Settled)
    [(_, outcome)] = meter.settled
    assert outcome.served.id == engines[1] and outcome.status == "ok"
    assert call.headers()["x-stepplan-routed-model"] == engines[1]
    assert [oa.sent(i)["model"] for i in range(len(oa.requests))][-1] == engines[1]


async def test_no_fallback_after_the_first_byte() -> None:
    broken = sse_answer([chunk({"role": "assistant", "content": ""}), chunk({"content": "par"})])
    broken.error_after = HTTPError("connection reset by the upstream")
    gw, meter = gateway(ScriptedTransport(broken))
    meter.durable.set()
    call = await gw.start_call(req(stream=True), KEY, "t-5", 100)
    await call.open()
    with pytest.raises(UpstreamError):
        async for _ in call.stream():
            pass
    [(_, outcome)] = meter.settled
    assert outcome.status == "upstream_error" and outcome.usage.output >= 1


async def test_the_effort_header_names_the_level_the_engine_was_sent() -> None:
    oa = ScriptedTransport(json_answer({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "ok"}}], "usage": USAGE}))
    gw, meter = gateway(oa)
    meter.durable.set()
    call = await gw.start_call(req("step-3.5-flash-2603", effort="medium"), KEY, "t-6", 100)
    await call.complete()
    assert oa.sent()["reasoning_effort"] == "high"  # 2603 has low/high; the tie goes to its default
    assert call.headers()["x-stepplan-effort"] == "high"

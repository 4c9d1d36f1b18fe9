"""The OpenAI and Anthropic engines in-process, over a scripted transport (no sockets).

What is checked: the request each engine sends (path, model name, DeepSeek thinking by the
catalog's ``thinking_style`` flag, not the model's name), decoding of JSON answers and streams,
the shared SSE loop's behaviour on both engines (a last event without its blank line is still
read, malformed / wrong-shape / error frames and early ends are UpstreamError), and the
Anthropic engine's memory of thinking signatures.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from stepplan.catalog import Catalog, ModelSpec
from stepplan.engines.anthropic import AnthropicEngine
from stepplan.engines.base import CallContext
from stepplan.engines.openai import OpenAIEngine
from stepplan.errors import UpstreamError
from stepplan.protocols.canonical import (
    Event,
    Finish,
    Message,
    Request,
    Text,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    UsageUpdate,
)
from stepplan.settings import UpstreamConfig

from .scripted import Scripted, ScriptedTransport, json_answer, sse_answer

CATALOG = Catalog.build()
FLASH = CATALOG.get("step-3.5-flash")
PRO = CATALOG.get("deepseek-v4-pro")
CTX = CallContext("trace-1")


def request(**kw: Any) -> Request:
    return Request(model="step-3.5-flash", messages=[Message("user", [Text("hi")])], **kw)


def openai(t: ScriptedTransport) -> OpenAIEngine:
    return OpenAIEngine(UpstreamConfig("oa", "openai", base_url="http://oa.invalid/v1", api_key="k"), t)


def anthropic(t: ScriptedTransport) -> AnthropicEngine:
    return AnthropicEngine(UpstreamConfig("an", "anthropic", base_url="http://an.invalid/v1", api_key="k"), t)


async def collect(engine: OpenAIEngine | AnthropicEngine, req: Request, spec: ModelSpec = FLASH) -> list[Event]:
    return [ev async for ev in engine.stream(req, spec, CTX)]


# ------------------------------------------------------------------------------------ OpenAI
def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_openai_complete_sends_the_upstream_name_and_decodes_the_answer() -> None:
    t = ScriptedTransport(json_answer({"id": "c1", "model": "m", "usage": USAGE, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}))
    spec = replace(FLASH, upstream_model="step-up")
    resp = await openai(t).complete(request(), spec, CTX)
    assert resp.content == [Text("hello")] and resp.stop_reason == "end_turn" and resp.usage.output == 2
    assert t.requests[0].path == "/chat/completions"
    assert t.requests[0].header_dict()["authorization"] == "Bearer k"
    assert t.sent()["model"] == "step-up" and "stream" not in t.sent()


async def test_openai_stream_decodes_chunks_usage_and_done() -> None:
    t = ScriptedTransport(sse_answer([
        chunk({"reasoning_content": "think"}), chunk({"content": "he"}),
        b'data: {"choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":"stop"}]}\n\ndata: ',
        b'{"choices":[],"usage":' + b'{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
        b"data: [DONE]\n\n", b"data: {not even json}\n\n",  # nothing after [DONE] is read
    ]))
    events = await collect(openai(t), request())
    assert events[:3] == [ThinkingDelta("think"), TextDelta("he"), TextDelta("llo")]
    assert isinstance(events[3], UsageUpdate) and events[3].usage.output == 2
    assert events[4:] == [Finish("end_turn")]
    assert t.sent()["stream"] is True and t.sent()["stream_options"] == {"include_usage": True}
    assert t.requests[0].header_dict()["accept"] == "text/event-stream"


async def test_openai_stream_flushes_a_last_event_without_its_blank_line() -> None:
    """The drift issue 12 names: only the Anthropic engine flushed the SSE parser at the end."""
    t = ScriptedTransport(sse_answer([chunk({"content": "a"}), b'data: {"choices":[{"index":0,"delta":{},'
                                      b'"finish_reason":"length"}],"usage":{"prompt_tokens":1,'
                                      b'"completion_tokens":1,"total_tokens":2}}']))
    events = await collect(openai(t), request())
    assert events[0] == TextDelta("a") and isinstance(events[1], UsageUpdate) and events[-1] == Finish("max_tokens")


async def test_openai_deepseek_thinking_follows_the_catalog_flag_not_the_name() -> None:
    t = ScriptedTransport(*[sse_answer([chunk(finish="stop"), b"data: [DONE]\n\n"]) for _ in range(3)])
    engine = openai(t)
    await collect(engine, request(thinking=False), PRO)
    assert t.sent()["thinking"] == {"type": "disabled"}
    await collect(engine, request(thinking=True), replace(PRO, thinking_style=""))
    assert "thinking" not in t.sent()
    await collect(engine, request(thinking=True), replace(FLASH, thinking_style="deepseek"))
    assert t.sent()["thinking"] == {"type": "enabled"}


@pytest.mark.parametrize(("frames", "message"), [
    ([b"data: {oops\n\n"], "sent a malformed stream event"),
    ([b'data: {"error": {"message": "overloaded"}}\n\n'], "failed mid-stream: overloaded"),
    ([b'data: [1, 2]\n\n'], "sent a stream event of the wrong shape"),
    ([b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [5]}}]}\n\n'], "of the wrong shape"),
    ([chunk({"content": "cut"})], "closed the stream before it finished"),
])
async def test_openai_stream_failures_are_upstream_errors(frames: list[Any], message: str) -> None:
    answer = sse_answer(frames)
    t = ScriptedTransport(answer)
    with pytest.raises(UpstreamError, match=message):
        await collect(openai(t), request())
    assert answer.closed


async def test_openai_stream_request_is_encoded_when_reading_starts() -> None:
    t = ScriptedTransport()
    events = openai(t).stream(request(), FLASH, CTX)
    assert t.requests == []  # nothing sent until the caller reads
    await events.aclose()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ Anthropic
def ev(kind: str, **fields: Any) -> bytes:
    import orjson

    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


START = ev("message_start", message={"id": "m1", "usage": {"input_tokens": 5, "output_tokens": 1}})
THINKING = [
    ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "let me "}),
    ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "see"}),
    ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "sig-1"}),
    ev("content_block_stop", index=0),
]
TEXT = [
    ev("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    ev("content_block_delta", index=1, delta={"type": "text_delta", "text": "hi"}),
    ev("content_block_stop", index=1),
]
END = ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3})
STOP = ev("message_stop")


async def test_anthropic_stream_decodes_and_remembers_thinking_signatures() -> None:
    t = ScriptedTransport(Scripted(200, {"content-type": "text/event-stream"},
                                   [START, *THINKING, *TEXT, END + STOP, b"data: {garbage after the end}\n\n"]))
    engine = anthropic(t)
    events = await collect(engine, request())
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["UsageUpdate", "ThinkingDelta", "ThinkingDelta", "ThinkingSignature", "TextDelta",
                     "UsageUpdate", "Finish"]
    assert ThinkingSignature("sig-1") in events and events[-1] == Finish("end_turn")
    assert engine.signatures.get("let me see") == "sig-1"
    h = t.requests[0].header_dict()
    assert t.requests[0].path == "/messages" and h["x-api-key"] == "k" and h["anthropic-version"] == "2023-06-01"
    assert t.sent()["stream"] is True and t.sent()["model"] == "step-3.5-flash"


async def test_anthropic_stream_flushes_a_last_event_without_its_blank_line() -> None:
    t = ScriptedTransport(Scripted(200, {"content-type": "text/event-stream"}, [START, *TEXT, END[:-2]]))
    events = await collect(anthropic(t), request())  # no message_stop: the flushed finish ends it
    assert TextDelta("hi") in events and events[-1] == Finish("end_turn")


@pytest.mark.parametrize(("frames", "message"), [
    ([START, b"event: x\ndata: {oops\n\n"], "sent a malformed stream event"),
    ([START, ev("error", error={"type": "overloaded_error", "message": "busy"})],
     "failed mid-stream: overloaded_error: busy"),
    ([START, b"data: [1]\n\n"], "sent a stream event of the wrong shape"),
    ([START, b'data: {"type": "message_start", "message": [1]}\n\n'], "of the wrong shape"),
    ([START, *TEXT], "closed the stream before it finished"),
])
async def test_anthropic_stream_failures_are_upstream_errors(frames: list[bytes], message: str) -> None:
    answer = Scripted(200, {"content-type": "text/event-stream"}, frames)
    with pytest.raises(UpstreamError, match=message):
        await collect(anthropic(ScriptedTransport(answer)), request())
    assert answer.closed


async def test_anthropic_complete_decodes_and_reports_error_documents() -> None:
    t = ScriptedTransport(
        json_answer({"id": "m1", "type": "message", "role": "assistant", "model": "x", "stop_reason": "tool_use",
                     "content": [{"type": "thinking", "thinking": "hmm", "signature": "s9"},
                                 {"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": 1}}],
                     "usage": {"input_tokens": 3, "output_tokens": 4}}),
        json_answer({"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}),
    )
    engine = anthropic(t)
    resp = await engine.complete(request(), FLASH, CTX)
    assert resp.stop_reason == "tool_use" and resp.usage.output == 4
    assert engine.signatures.get("hmm") == "s9"
    assert t.sent()["max_tokens"] == FLASH.max_output  # the model's default when the client sent none
    with pytest.raises(UpstreamError, match="failed: invalid_request_error: no"):
        await engine.complete(request(), FLASH, CTX)


async def test_anthropic_tool_calls_stream_as_deltas() -> None:
    frames = [START, ev("content_block_start", index=0,
                        content_block={"type": "tool_use", "id": "t1", "name": "Read", "input": {}}),
              ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": '{"p":'}),
              ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": "1}"}),
              ev("content_block_stop", index=0), ev("message_delta", delta={"stop_reason": "tool_use"}), STOP]
    events = await collect(anthropic(ScriptedTransport(Scripted(200, {"content-type": "text/event-stream"},
                                                                frames))), request())
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].id == "t1" and deltas[0].name == "Read"
    assert "".join(d.arguments for d in deltas) == '{"p":1}' and events[-1] == Finish("tool_use")

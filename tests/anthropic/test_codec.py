"""Unit tests of the Anthropic codec: request decode/encode, usage, responses, and both stream
state machines (including awkward network splits). No server involved."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from stepplan.errors import InvalidRequest, UnsupportedContent
from stepplan.protocols.anthropic_request import MID_SYSTEM_OPEN, decode_request, encode_request
from stepplan.protocols.anthropic_response import (
    StreamDecoder,
    StreamEncoder,
    decode_response,
    encode_response,
    usage_from_anthropic,
    usage_to_anthropic,
)
from stepplan.protocols.canonical import (
    Document,
    Finish,
    Image,
    Message,
    Request,
    Response,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ThinkingSignature,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    Usage,
    UsageUpdate,
)
from stepplan.reasoning import Signer
from stepplan.streaming.sse import SSEParser
from tests.anthropic.wire import anthropic_stream, check_block_sequence, parse_sse

SIGNER = Signer(b"test-secret")


def body(**kw: Any) -> dict[str, Any]:
    b = {"model": "step-3.5-flash", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    b.update(kw)
    return b


def decode(**kw: Any) -> Request:
    return decode_request(body(**kw), SIGNER)


# ============================================================================ request decode
def test_system_string_and_blocks_with_cache_control() -> None:
    assert decode(system="be brief").system == [Text("be brief")]
    req = decode(system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;"},
                         {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                         {"type": "text", "text": "B"}])
    assert req.system == [Text("A", cache=True), Text("B")]  # billing line dropped (per-session noise)


def test_content_blocks_of_every_kind() -> None:
    mine = SIGNER.sign("plan it")
    req = decode(messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "plan it", "signature": mine},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "text result"},
            {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
                {"type": "text", "text": "bad"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "BBBB"}}]},
        ]},
    ])
    user, asst, results = req.messages
    assert user.content == [Text("look", cache=True), Image(data="AAAA", media_type="image/png"),
                            Image(url="https://x/y.png"), Document(media_type="text/plain", text="doc"),
                            Document(media_type="application/pdf", data="JVBE")]
    assert asst.content == [Thinking("plan it"), Thinking("opaque", redacted=True), Text("calling"),
                            ToolCall("t1", "Read", '{"path":"a"}')]
    assert results.content == [
        ToolResult("t1", [Text("text result")]),
        ToolResult("t2", [Text("bad"), Image(data="BBBB", media_type="image/jpeg")], is_error=True)]


def test_thinking_signatures_ours_upstreams_and_foreign() -> None:
    wrapped = SIGNER.sign("deep", "91cfbb94-uuid")
    req = decode(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "deep", "signature": wrapped},
        {"type": "thinking", "thinking": "forged", "signature": "c2lnLWZyb20tcmVjb3JkZXI="},
        {"type": "thinking", "thinking": "tampered", "signature": SIGNER.sign("original")},
        {"type": "thinking", "thinking": "", "signature": SIGNER.sign("", "sig-only")},
        {"type": "text", "text": "done"}]}])
    assert req.messages[1].content == [Thinking("deep", signature="91cfbb94-uuid"),
                                       Thinking("", signature="sig-only"), Text("done")]
    assert Signer(b"other-secret").open("deep", wrapped) == (False, None)


def test_system_role_messages_leading_mid_and_trailing() -> None:
    req = decode(system="S", messages=[
        {"role": "system", "content": "lead"},
        {"role": "user", "content": "u1"},
        {"role": "system", "content": [{"type": "text", "text": "mid"}]},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "system", "content": "tail"}])
    assert req.system == [Text("S"), Text("lead")]
    assert [(m.role, m.content) for m in req.messages] == [
        ("user", [Text("u1")]), ("system", [Text("mid")]), ("assistant", [Text("a1")]),
        ("user", [Text("u2")]), ("system", [Text("tail")])]


def test_tools_tool_choice_thinking_effort_and_sampling() -> None:
    req = decode(
        tools=[{"name": "Read", "description": "read a file", "input_schema": {"type": "object"}},
               {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 500}, output_config={"effort": "max"},
        stop_sequences=["END"], temperature=0.3, top_p=0.9, top_k=40, stream=True,
        metadata={"user_id": '{"session_id":"s1"}'},
        context_management={"edits": []}, container="c", mcp_servers=[{"url": "x"}], service_tier="auto")
    assert req.tools[0] == Tool("Read", "read a file", {"type": "object"})
    assert req.tools[1].kind == "web_search" and req.tools[1].parameters["max_uses"] == 3
    assert req.tool_choice == ToolChoice("required") and req.parallel_tool_calls is False
    assert (req.thinking, req.thinking_budget, req.effort) == (True, 500, "max")  # mapped per model later
    assert (req.stop, req.temperature, req.top_p, req.top_k, req.stream) == (["END"], 0.3, 0.9, 40, True)
    assert req.user is None  # Claude Code's JSON record is a session id, not a user name
    assert decode(tool_choice={"type": "tool", "name": "Read"}).tool_choice == ToolChoice("tool", "Read")
    assert decode(tool_choice={"type": "none"}).tool_choice == ToolChoice("none")
    assert decode(thinking={"type": "adaptive"}).thinking is True
    # The decoder keeps what the client said; the pipeline resolves the contradiction per model
    # (tests/api/test_effort_mapping.py): never both "disabled" and an effort upstream.
    contradiction = decode(thinking={"type": "disabled"}, output_config={"effort": "high"})
    assert (contradiction.thinking, contradiction.effort) == (False, "high")


@pytest.mark.parametrize("patch,param", [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]},
     "messages[0].content[0].source.url"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
    ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"temperature": 3}, "temperature"),
    ({"tools": [{"name": 5}]}, "tools[0].name"),
])
def test_validation_errors_name_the_field(patch: dict[str, Any], param: str) -> None:
    b = body()
    for k, v in patch.items():
        if v is None:
            b.pop(k)
        else:
            b[k] = v
    with pytest.raises(InvalidRequest) as err:
        decode_request(b, SIGNER)
    assert err.value.param == param


def test_unknown_tool_type_is_unsupported_and_count_only_needs_no_max_tokens() -> None:
    with pytest.raises(UnsupportedContent):
        decode(tools=[{"type": "computer_20250124", "name": "computer"}])
    b = body()
    b.pop("max_tokens")
    assert decode_request(b, SIGNER, count_only=True).max_tokens is None


# ============================================================================ request encode (upstream side)
def test_encode_merges_turns_orders_tool_results_and_wraps_system() -> None:
    req = Request(model="m", max_tokens=100, system=[Text("S", cache=True)], messages=[
        Message("user", [Text("q")]),
        Message("user", [Text("more")]),
        Message("assistant", [Thinking("why", signature="up-sig"), ToolCall("t1", "Read", '{"p":1}')]),
        Message("system", [Text("reminder")]),
        Message("user", [ToolResult("t1", [Text("r1")]), Image(data="AA", media_type="image/png")]),
        Message("system", [Text("trailing")]),
    ])
    out = encode_request(req, "up-model", stream=True, default_max_tokens=10)
    assert out["system"] == [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    msgs = out["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == [{"type": "text", "text": "q"}, {"type": "text", "text": "more"}]
    assert msgs[1]["content"] == [{"type": "thinking", "thinking": "why", "signature": "up-sig"},
                                  {"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": 1}}]
    last = msgs[2]["content"]
    assert last[0] == {"type": "tool_result", "tool_use_id": "t1", "content": "r1"}  # tool results come first
    assert last[1]["text"].startswith(MID_SYSTEM_OPEN) and "reminder" in last[1]["text"]
    assert last[2]["type"] == "image" and "trailing" in last[3]["text"]
    assert out["stream"] is True and out["max_tokens"] == 100 and out["model"] == "up-model"


def test_encode_thinking_config_effort_and_sampling() -> None:
    base = Request(model="m", messages=[Message("user", [Text("q")])], temperature=0.5, top_k=5)
    plain = encode_request(base, "m", stream=False, default_max_tokens=8000)
    assert plain["max_tokens"] == 8000 and plain["temperature"] == 0.5 and plain["top_k"] == 5
    assert "thinking" not in plain and "output_config" not in plain
    small = Request(model="m", messages=base.messages, thinking=True, thinking_budget=500, max_tokens=4000,
                    effort="high", temperature=0.5)
    out = encode_request(small, "m", stream=False, default_max_tokens=8000)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}  # raised to Anthropic's minimum
    assert out["output_config"] == {"effort": "high"} and "temperature" not in out
    adaptive = encode_request(Request(model="m", messages=base.messages, thinking=True), "m", stream=False,
                              default_max_tokens=100)
    assert adaptive["thinking"] == {"type": "adaptive"}
    off = encode_request(Request(model="m", messages=base.messages, thinking=False, effort="high"), "m",
                         stream=False, default_max_tokens=100)
    assert off["thinking"] == {"type": "disabled"} and "output_config" not in off


def test_encode_tools_and_choice() -> None:
    req = Request(model="m", messages=[Message("user", [Text("q")])],
                  tools=[Tool("Read", "r", {"type": "object"}), Tool("web_search", None, {}, kind="web_search")],
                  tool_choice=ToolChoice("tool", "Read"), parallel_tool_calls=False)
    out = encode_request(req, "m", stream=False, default_max_tokens=10)
    assert out["tools"] == [{"name": "Read", "input_schema": {"type": "object"}, "description": "r"},
                            {"type": "web_search_20250305", "name": "web_search"}]
    assert out["tool_choice"] == {"type": "tool", "name": "Read", "disable_parallel_tool_use": True}


def test_encode_restores_reasoning_and_upstream_signature_for_text_only_history() -> None:
    req = Request(model="m", messages=[Message("user", [Text("q")]),
                                       Message("assistant", [ToolCall("t1", "Read", "{}")]),
                                       Message("user", [ToolResult("t1", [Text("ok")])])])
    out = encode_request(req, "m", stream=False, default_max_tokens=10, restore=lambda calls: "remembered",
                         signature_for=lambda text: "sig-for-" + text)
    assert out["messages"][1]["content"][0] == {"type": "thinking", "thinking": "remembered",
                                                "signature": "sig-for-remembered"}


# ============================================================================ usage
def test_usage_anthropic_input_excludes_cache_and_5m_1h_split_counts() -> None:
    u = usage_from_anthropic({"input_tokens": 10, "cache_read_input_tokens": 900, "output_tokens": 5,
                              "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 70}})
    assert u == Usage(input=10, cache_read=900, cache_write=100, output=5, known=True)
    later = usage_from_anthropic({"output_tokens": 42}, u)
    assert later is not None and (later.input, later.cache_read, later.cache_write, later.output) == (10, 900, 100, 42)
    assert usage_to_anthropic(Usage(input=-3, output=-1)) == {
        "input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}


# ============================================================================ responses
def test_decode_and_encode_response_round_trip() -> None:
    resp = decode_response({"id": "m1", "model": "up", "stop_reason": "stop_sequence", "stop_sequence": "END",
                            "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                        {"type": "text", "text": "hi"},
                                        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}],
                            "usage": {"input_tokens": 3, "output_tokens": 4}})
    assert resp.content == [Thinking("t", signature="s"), Text("hi"), ToolCall("c", "f", '{"a":1}')]
    assert (resp.stop_reason, resp.stop_sequence) == ("stop_sequence", "END")
    out = encode_response(resp, "step-3.5-flash", "msg_1", SIGNER)
    assert out["content"][0]["type"] == "thinking"
    assert SIGNER.open("t", out["content"][0]["signature"]) == (True, "s")
    assert out["content"][2]["input"] == {"a": 1}
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    assert out["usage"] == {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                            "output_tokens": 4}


@pytest.mark.parametrize("reason,expected", [("end_turn", "end_turn"), ("max_tokens", "max_tokens"),
                                             ("tool_use", "tool_use"), ("content_filter", "refusal")])
def test_stop_reason_mapping(reason: str, expected: str) -> None:
    out = encode_response(Response("i", "m", [Text("x")], reason, Usage()), "m", "i", SIGNER)  # type: ignore[arg-type]
    assert out["stop_reason"] == expected and out["stop_sequence"] is None


# ============================================================================ stream decoder (upstream side)
def _raw(events: list[Any]) -> bytes:
    return b"".join(b"event: " + e.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for e, d in events)


def _decode_all(chunks: list[bytes]) -> list[Any]:
    parser, dec, out = SSEParser(), StreamDecoder(), []
    for ch in chunks:
        for _, data in parser.feed(ch):
            out += dec.feed(orjson.loads(data))
    return out + dec.close()


def test_stream_decoder_events() -> None:
    events = anthropic_stream(thinking="hmm", text="héllo", tools=[("c1", "f", ['{"a"', ':1}']), ("c2", "g", [])],
                              usage_in={"input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 1},
                              usage_out={"output_tokens": 9})
    out = _decode_all([_raw(events)])
    assert out == [
        UsageUpdate(Usage(input=5, cache_read=7, output=1, known=True, final=False)),  # message_start: a placeholder
        ThinkingDelta("hmm"), ThinkingSignature("upstream-sig"), TextDelta("héllo"),
        ToolCallDelta(0, "c1", "f", ""), ToolCallDelta(0, arguments='{"a"'), ToolCallDelta(0, arguments=":1}"),
        ToolCallDelta(1, "c2", "g", ""), ToolCallDelta(1, arguments="{}"),  # no-argument call still gets {}
        UsageUpdate(Usage(input=5, cache_read=7, output=9, known=True)),
        Finish("tool_use")]


def test_stream_decoder_survives_every_split_point() -> None:
    """UTF-8 characters and SSE events split across reads at every possible byte."""
    raw = _raw(anthropic_stream(thinking="思考中…", text="naïve 🚀 text", tools=[("c1", "f", ['{"k":"ü', 'ber"}'])]))
    whole = _decode_all([raw])
    for cut in range(1, len(raw)):
        assert _decode_all([raw[:cut], raw[cut:]]) == whole, f"split at byte {cut}"
    assert _decode_all([raw[i:i + 1] for i in range(len(raw))]) == whole
    crlf = raw.replace(b"\n", b"\r\n").replace(b"data: ", b"data:")
    assert _decode_all([b": comment\n\n", crlf]) == whole


# ============================================================================ stream encoder (client side)
def _encode(events: list[Any], usage: Usage | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    enc = StreamEncoder("msg_1", "step-3.5-flash", SIGNER)
    raw = enc.start(events[0]) + b"".join(enc.feed(e) for e in events) + enc.end(usage)
    return parse_sse(raw.decode())


def test_stream_encoder_block_state_machine() -> None:
    evs = _encode([UsageUpdate(Usage(input=5, cache_read=3, known=True)), ThinkingDelta("a"), ThinkingDelta("b"),
                   TextDelta("hi"), ToolCallDelta(0, "c1", "f", ""), ToolCallDelta(0, arguments='{"x":'),
                   ToolCallDelta(0, arguments="1}"), ToolCallDelta(1, "c2", "g", '{"y":2}'),
                   UsageUpdate(Usage(input=5, cache_read=3, output=12, known=True)), Finish("tool_use")])
    check_block_sequence(evs)
    names = [e for e, _ in evs]
    assert names[:2] == ["message_start", "ping"]
    assert evs[0][1]["message"]["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 3, "output_tokens": 0}
    starts = [d["content_block"] for e, d in evs if e == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert [b.get("id") for b in starts[2:]] == ["c1", "c2"]
    sig = [d["delta"]["signature"] for e, d in evs if e == "content_block_delta"
           and d["delta"]["type"] == "signature_delta"]
    assert len(sig) == 1 and SIGNER.verify("ab", sig[0])
    args = [(d["index"], d["delta"]["partial_json"]) for e, d in evs if e == "content_block_delta"
            and d["delta"]["type"] == "input_json_delta"]
    assert args == [(2, '{"x":'), (2, "1}"), (3, '{"y":2}')]
    md = next(d for e, d in evs if e == "message_delta")
    assert md["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert md["usage"]["output_tokens"] == 12 and md["usage"]["input_tokens"] == 5


def test_stream_encoder_upstream_signature_ends_a_thinking_block() -> None:
    evs = _encode([ThinkingDelta("one"), ThinkingSignature("s1"), ThinkingDelta("two"), ThinkingSignature("s2"),
                   TextDelta("x"), Finish("end_turn")])
    check_block_sequence(evs)
    sigs = [d["delta"]["signature"] for e, d in evs if e == "content_block_delta"
            and d["delta"]["type"] == "signature_delta"]
    assert [SIGNER.open(t, s) for t, s in zip(["one", "two"], sigs, strict=True)] == [(True, "s1"), (True, "s2")]


def test_stream_encoder_stop_sequence_usage_override_and_error() -> None:
    evs = _encode([TextDelta("x"), Finish("stop_sequence", "END")], usage=Usage(input=4, output=2, known=True))
    md = next(d for e, d in evs if e == "message_delta")
    assert md["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert md["usage"]["output_tokens"] == 2 and md["usage"]["input_tokens"] == 4
    err = parse_sse(StreamEncoder.error({"type": "error", "error": {"type": "api_error", "message": "boom"}}).decode())
    assert err == [("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})]


def test_stream_encoder_output_is_valid_json_for_awkward_text() -> None:
    text = 'quote " backslash \\ newline \n tab \t nul \x00 emoji 🚀 </script>'
    evs = _encode([TextDelta(text), Finish("end_turn")])
    assert "".join(d["delta"]["text"] for e, d in evs if e == "content_block_delta") == text
    assert json.loads(json.dumps(evs))  # round-trips

"""The Responses stream encoder as a state machine: canonical events in, the exact event sequence out,
every event checked against the SDK's typed models and its stream accumulator."""

from __future__ import annotations

import json
from typing import Any

from stepplan.protocols.canonical import (
    Event,
    Finish,
    RedactedThinking,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)
from stepplan.protocols.responses_request import decode_request
from stepplan.protocols.responses_response import Answer
from stepplan.protocols.responses_stream import RawInput, StreamEncoder
from stepplan.reasoning_seal import Sealer
from tests.responses.wire import check_events, kinds, parse_sse

SEALER = Sealer(b"stream-secret")
TOOLS = [{"type": "function", "name": "read"}, {"type": "custom", "name": "apply_patch"},
         {"type": "namespace", "name": "agents", "description": "", "tools": [{"type": "function", "name": "spawn"}]}]


def run(events: list[Event], *, billed: Usage | None = None, error: dict[str, Any] | None = None,
        **options: Any) -> tuple[list[tuple[str, dict[str, Any]]], StreamEncoder]:
    _, shape = decode_request({"model": "m", "input": "x", "tools": TOOLS, **options}, SEALER.open)
    enc = StreamEncoder(Answer("resp_test", "step-3.7-flash", shape, SEALER, created_at=1))
    out = enc.start() + b"".join(enc.feed(ev) for ev in events)
    out += enc.error(error) if error is not None else enc.end(billed)
    parsed = parse_sse(out.decode())
    check_events(parsed)
    return parsed, enc


def test_reasoning_with_summary_then_text() -> None:
    ev, enc = run([ThinkingDelta("Let me "), ThinkingDelta("think."), TextDelta("Hi"), TextDelta(" there"),
                   UsageUpdate(Usage(input=3, output=9, reasoning=4, known=True)), Finish("end_turn")],
                  reasoning={"summary": "auto"}, include=["reasoning.encrypted_content"])
    assert kinds(ev) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.completed"]
    data = dict(ev)
    assert data["response.reasoning_summary_text.done"]["text"] == "Let me think."
    assert data["response.output_text.done"]["text"] == "Hi there"
    rs = ev[8][1]["item"]
    assert rs["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert SEALER.open(rs["encrypted_content"]) == Thinking("Let me think.")
    final = ev[-1][1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert enc.final is not None and enc.final["output"][0]["encrypted_content"]


def test_without_summary_reasoning_is_one_quiet_item_and_encrypted_content_stays_stored_only() -> None:
    ev, enc = run([ThinkingDelta("secret plan"), TextDelta("ok"), Finish("end_turn")])
    assert kinds(ev)[2:4] == ["response.output_item.added", "response.output_item.done"]
    assert ev[3][1]["item"] == {"id": ev[2][1]["item"]["id"], "type": "reasoning", "summary": []}
    assert enc.final is not None
    assert SEALER.open(enc.final["output"][0]["encrypted_content"]) == Thinking("secret plan")


def test_parallel_tool_calls_stay_open_together_and_keep_interleaved_fragments() -> None:
    ev, _ = run([TextDelta("Reading."),
                 ToolCallDelta(0, "call_a", "read", '{"p":'), ToolCallDelta(1, "call_b", "agents__spawn", ""),
                 ToolCallDelta(0, None, None, '"x"}'), ToolCallDelta(1, None, None, '{"n":1}'),
                 Finish("tool_use")])
    assert kinds(ev)[2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = ev[-1][1]["response"]["output"]
    assert [i["type"] for i in final] == ["message", "function_call", "function_call"]
    assert (final[1]["call_id"], final[1]["name"], final[1]["arguments"]) == ("call_a", "read", '{"p":"x"}')
    assert (final[2]["name"], final[2]["namespace"], final[2]["arguments"]) == ("spawn", "agents", '{"n":1}')
    deltas = [(d["output_index"], d["delta"]) for n, d in ev if n == "response.function_call_arguments.delta"]
    assert deltas == [(1, '{"p":'), (1, '"x"}'), (2, '{"n":1}')]
    added = [d["item"] for n, d in ev if n == "response.output_item.added" and d["item"]["type"] == "function_call"]
    assert added[1]["namespace"] == "agents" and added[1]["name"] == "spawn" and added[1]["arguments"] == ""


def test_custom_tool_call_input_streams_unescaped() -> None:
    ev, _ = run([ToolCallDelta(0, "call_p", "apply_patch", '{"input":"*** Begin'),
                 ToolCallDelta(0, None, None, ' Patch\\n"}'), Finish("tool_use")])
    assert kinds(ev)[2:] == ["response.output_item.added", "response.custom_tool_call_input.delta",
                             "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
                             "response.output_item.done", "response.completed"]
    assert [ev[3][1]["delta"], ev[4][1]["delta"]] == ["*** Begin", " Patch\n"]
    assert ev[5][1]["input"] == "*** Begin Patch\n"
    item = ev[6][1]["item"]
    assert (item["type"], item["name"], item["call_id"], item["input"]) == (
        "custom_tool_call", "apply_patch", "call_p", "*** Begin Patch\n")


def test_a_call_without_arguments_gets_an_empty_object() -> None:
    ev, _ = run([ToolCallDelta(0, "call_x", "read", ""), Finish("tool_use")])
    assert [d.get("delta") for n, d in ev if n == "response.function_call_arguments.delta"] == ["{}"]
    assert ev[-1][1]["response"]["output"][0]["arguments"] == "{}"


def test_upstream_signatures_are_sealed_per_thinking_block() -> None:
    ev, enc = run([ThinkingDelta("one"), ThinkingSignature("sig-1"), ThinkingDelta("two"), ThinkingSignature("sig-2"),
                   RedactedThinking("opaque"), ToolCallDelta(0, "toolu_1", "read", "{}"), Finish("tool_use")])
    assert enc.final is not None
    sealed = [SEALER.open(i["encrypted_content"]) for i in enc.final["output"] if i["type"] == "reasoning"]
    assert sealed == [Thinking("one", signature="sig-1"), Thinking("two", signature="sig-2"),
                      Thinking("opaque", redacted=True)]
    assert [i["type"] for i in ev[-1][1]["response"]["output"]] == ["reasoning"] * 3 + ["function_call"]


def test_max_tokens_ends_with_response_incomplete() -> None:
    ev, _ = run([TextDelta("cut sho"), Finish("max_tokens")], billed=Usage(input=5, output=2, known=True))
    assert ev[-1][0] == "response.incomplete"
    resp = ev[-1][1]["response"]
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["output"][0]["status"] == "incomplete" and resp["usage"]["input_tokens"] == 5


def test_billed_usage_wins_over_the_streamed_one() -> None:
    ev, _ = run([TextDelta("a"), UsageUpdate(Usage(input=1, output=1, known=True)), Finish("end_turn")],
                billed=Usage(input=7, cache_read=3, output=2, known=True))
    assert ev[-1][1]["response"]["usage"]["input_tokens"] == 10
    assert ev[-1][1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 3


def test_error_after_the_first_byte_is_an_error_event_then_response_failed() -> None:
    ev, _ = run([TextDelta("partial")], error={"error": {"message": "upstream broke", "code": "upstream_error",
                                                         "type": "upstream_error", "param": None}})
    assert kinds(ev)[-2:] == ["error", "response.failed"]
    assert ev[-2][1]["code"] == "upstream_error" and ev[-2][1]["message"] == "upstream broke"
    failed = ev[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "upstream_error: upstream broke"}


def test_a_late_fragment_for_a_closed_call_is_dropped() -> None:
    ev, _ = run([ToolCallDelta(0, "c1", "read", "{}"), TextDelta("and"), ToolCallDelta(0, None, None, "late"),
                 Finish("tool_use")])
    assert ev[-1][1]["response"]["output"][0]["arguments"] == "{}"


def test_custom_input_in_another_form_is_sent_whole_at_the_end() -> None:
    ev, _ = run([ToolCallDelta(0, "call_p", "apply_patch", '{"patch": "a'), ToolCallDelta(0, None, None, 'b"}'),
                 Finish("tool_use")])
    deltas = [d["delta"] for n, d in ev if n == "response.custom_tool_call_input.delta"]
    assert deltas == ["ab"] and ev[-1][1]["response"]["output"][0]["input"] == "ab"


def raw_input(fragments: list[str]) -> list[str]:
    r = RawInput()
    return [r.feed(f) for f in fragments]


def test_raw_input_unescapes_across_fragment_boundaries() -> None:
    args = '{ "input" : "a\\"b\\\\c\\nd\\u00e9\\ud83d\\ude00!" }'
    want = 'a"b\\c\ndé😀!'
    assert json.loads(args)["input"] == want
    assert "".join(raw_input([args])) == want
    for cut in range(1, len(args)):  # every split point, escapes and surrogate pairs included
        assert "".join(raw_input([args[:cut], args[cut:]])) == want, cut
    assert "".join(raw_input(list(args))) == want


def test_raw_input_stops_at_the_closing_quote_and_ignores_other_forms() -> None:
    assert raw_input(['{"input":"x"', ', "more": "y"}']) == ["x", ""]
    assert raw_input(['{"in', 'put":"ok"}']) == ["", "ok"]
    assert raw_input(['{"other": "x"}']) == [""]
    assert raw_input(["plain text"]) == [""]

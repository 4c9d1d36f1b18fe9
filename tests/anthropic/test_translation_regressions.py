"""One regression test per translation pitfall other gateways shipped
(../shared/spec/translation-pitfalls.md, items 1–20), named after it, run against the real
gateway with a fake upstream of the relevant protocol."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson

from stepplan.protocols.openai_request import MID_SYSTEM_OPEN
from stepplan.reasoning import Signer
from tests.anthropic.wire import (
    MESSAGE_STOP,
    anthropic_stream,
    block_delta,
    block_start,
    block_stop,
    check_block_sequence,
    message_delta,
    message_start,
    openai_tool_stream,
    parse_sse,
    post_stream,
)
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_chunk, openai_completion, openai_text_stream

USER = [{"role": "user", "content": "hi"}]
READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}}}}
READ_OAI = {"type": "function", "function": {"name": "Read", "parameters": READ["input_schema"]}}


def ask(url: str, key: str, **kw: Any) -> list[tuple[str | None, dict[str, Any]]]:
    status, raw = post_stream(url, key, {"model": "step-3.5-flash", "max_tokens": 500, "messages": USER, **kw})
    assert status == 200, raw
    return parse_sse(raw)


def deltas(events: list[tuple[str | None, dict[str, Any]]], kind: str, field: str) -> list[str]:
    return [d["delta"][field] for e, d in events if e == "content_block_delta" and d["delta"]["type"] == kind]


def usage_of(events: list[tuple[str | None, dict[str, Any]]], name: str) -> dict[str, Any]:
    data = next(d for e, d in events if e == name)
    return data["message"]["usage"] if name == "message_start" else data["usage"]


# ============================================================================ Anthropic ⇄ OpenAI streaming
# translation-pitfalls.md #1
def test_block_index_state_machine(gateway: Gateway, key: str, agw: Gateway, akey: str,
                                              fake: FakeUpstream) -> None:
    # OpenAI upstream: reasoning, text, reasoning again, then two calls — every switch opens a new block.
    fake.queue_sse([openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"reasoning_content": "a"}),
                    openai_chunk({"content": "b"}), openai_chunk({"reasoning_content": "c"}),
                    openai_chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "Read",
                                                                                          "arguments": "{}"}}]}),
                    openai_chunk({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "Read",
                                                                                          "arguments": "{}"}}]}),
                    openai_chunk({}, "tool_calls"), "[DONE]"])
    events = ask(gateway.anthropic_base, key, tools=[READ])
    check_block_sequence(events)
    assert [d["content_block"]["type"] for e, d in events if e == "content_block_start"] == [
        "thinking", "text", "thinking", "tool_use", "tool_use"]
    # Anthropic upstream with non-contiguous indices of its own: ours are renumbered 0, 1, 2.
    fake.queue_sse([message_start(), block_start(3, {"type": "text", "text": ""}),
                    block_delta(3, {"type": "text_delta", "text": "x"}), block_stop(3),
                    block_start(7, {"type": "tool_use", "id": "t", "name": "Read", "input": {}}),
                    block_delta(7, {"type": "input_json_delta", "partial_json": "{}"}), block_stop(7),
                    message_delta("tool_use"), MESSAGE_STOP])
    events = ask(agw.anthropic_base, akey, tools=[READ])
    check_block_sequence(events)


# translation-pitfalls.md #2
def test_tool_arguments_streamed_not_lost(client: anthropic.Anthropic, oclient: openai.OpenAI,
                                                     fake: FakeUpstream) -> None:
    big = json.dumps({"file_path": "x" * 20_000, "note": "ünïcödé 🚀"})
    pieces = [big[i:i + 400] for i in range(0, len(big), 400)]
    fake.queue_sse(openai_tool_stream([("c_a", "Read", pieces), ("c_b", "Read", ['{"file_path":"b"}'])]))
    seen: list[tuple[int, str]] = []
    with client.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ]) as s:
        for ev in s:
            if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                seen.append((ev.index, ev.delta.partial_json))
        m = s.get_final_message()
    assert [p for i, p in seen if i == 0] == pieces and [p for i, p in seen if i == 1] == ['{"file_path":"b"}']
    assert m.content[0].input == json.loads(big) and m.content[1].input == {"file_path": "b"}
    # OpenAI client from an Anthropic upstream: fragments arrive as tool_calls[].function.arguments.
    fake.queue_sse(anthropic_stream(tools=[("t_a", "Read", pieces), ("t_b", "Read", ['{"file_path":"b"}'])]))
    args: dict[int, list[str]] = {}
    for ch in oclient.chat.completions.create(model="step-3.5-flash", messages=USER, tools=[READ_OAI], stream=True):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            if tc.function and tc.function.arguments:
                args.setdefault(tc.index, []).append(tc.function.arguments)
    assert args == {0: pieces, 1: ['{"file_path":"b"}']}


# translation-pitfalls.md #3
def test_reasoning_stream_is_a_thinking_block_and_one_message_start(gateway: Gateway, key: str,
                                                                              fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("The answer.", reasoning="Thinking hard.", pieces=3))
    events = ask(gateway.anthropic_base, key)
    check_block_sequence(events)
    assert [e for e, _ in events].count("message_start") == 1
    assert "".join(deltas(events, "thinking_delta", "thinking")) == "Thinking hard."
    assert "".join(deltas(events, "text_delta", "text")) == "The answer."
    assert all("Thinking" not in t for t in deltas(events, "text_delta", "text"))


# translation-pitfalls.md #4
def test_thinking_history_kept_whole_and_in_order(aclient: anthropic.Anthropic,
                                                             fake: FakeUpstream) -> None:
    # Obtain genuinely signed blocks from the gateway: one with text, one signature-only.
    fake.queue_sse([message_start(), block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
                    block_delta(0, {"type": "thinking_delta", "thinking": "first"}),
                    block_delta(0, {"type": "signature_delta", "signature": "sig-A"}), block_stop(0),
                    block_start(1, {"type": "thinking", "thinking": "", "signature": ""}),
                    block_delta(1, {"type": "signature_delta", "signature": "sig-B"}), block_stop(1),
                    block_start(2, {"type": "tool_use", "id": "t4", "name": "Read", "input": {}}),
                    block_delta(2, {"type": "input_json_delta", "partial_json": "{}"}), block_stop(2),
                    message_delta("tool_use"), MESSAGE_STOP])
    with aclient.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ]) as s:
        m = s.get_final_message()
    blocks = [b.model_dump(exclude_none=True) for b in m.content]
    assert [b["type"] for b in blocks] == ["thinking", "thinking", "tool_use"]
    assert blocks[1]["thinking"] == "" and blocks[1]["signature"]
    history = [*USER, {"role": "assistant", "content": [blocks[0], {"type": "redacted_thinking", "data": "opaque=="},
                                                        blocks[1], blocks[2]]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t4", "content": "ok"}]}]
    aclient.messages.create(model="step-3.5-flash", max_tokens=100, messages=history, tools=[READ])
    assert fake.last.body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "first", "signature": "sig-A"},
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "thinking", "thinking": "", "signature": "sig-B"},
        {"type": "tool_use", "id": "t4", "name": "Read", "input": {}}]


# translation-pitfalls.md #5
def test_usage_in_message_start_and_message_delta(gateway: Gateway, key: str, agw: Gateway, akey: str,
                                                              fake: FakeUpstream) -> None:
    fake.queue_sse(anthropic_stream(text="hi", usage_in={
        "input_tokens": 40, "cache_read_input_tokens": 900, "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 0}},
        usage_out={"output_tokens": 25}))
    events = ask(agw.anthropic_base, akey)
    start, end = usage_of(events, "message_start"), usage_of(events, "message_delta")
    assert (start["input_tokens"], start["cache_read_input_tokens"], start["cache_creation_input_tokens"]) == (
        40, 900, 60)
    assert end == {"input_tokens": 40, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 60,
                   "output_tokens": 25}
    # An OpenAI upstream reports usage only at the end: message_start has every field (zero), the
    # message_delta the real numbers.
    fake.queue_sse(openai_text_stream("hi", usage={"prompt_tokens": 500, "completion_tokens": 9, "total_tokens": 509,
                                                   "prompt_tokens_details": {"cached_tokens": 300}}))
    events = ask(gateway.anthropic_base, key)
    assert set(usage_of(events, "message_start")) == {"input_tokens", "cache_read_input_tokens",
                                                      "cache_creation_input_tokens", "output_tokens"}
    assert usage_of(events, "message_delta") == {"input_tokens": 200, "cache_read_input_tokens": 300,
                                                 "cache_creation_input_tokens": 0, "output_tokens": 9}


# translation-pitfalls.md #6
def test_content_and_finish_in_one_chunk(gateway: Gateway, key: str, fake: FakeUpstream) -> None:
    fake.queue_sse([openai_chunk({"role": "assistant", "content": "all at once"}, "stop",
                                 usage={"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}), "[DONE]"])
    events = ask(gateway.anthropic_base, key)
    check_block_sequence(events)
    assert deltas(events, "text_delta", "text") == ["all at once"]
    names = [e for e, _ in events]
    assert names.index("content_block_delta") < names.index("message_delta")


# translation-pitfalls.md #7
def test_usage_only_final_chunk_and_missing_usage(gateway: Gateway, key: str, fake: FakeUpstream) -> None:
    fake.queue_sse([openai_chunk({"role": "assistant", "content": "x"}), openai_chunk({}, "stop"),
                    {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
                     "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}}, "[DONE]"])
    events = ask(gateway.anthropic_base, key)
    assert usage_of(events, "message_delta")["output_tokens"] == 4
    assert next(d for e, d in events if e == "message_delta")["delta"]["stop_reason"] == "end_turn"
    # An upstream that never reports usage: the gateway counts locally, never reports zero output.
    fake.queue_sse(openai_text_stream("some words that cost tokens", usage=None))
    events = ask(gateway.anthropic_base, key)
    u = usage_of(events, "message_delta")
    assert u["output_tokens"] > 0 and u["input_tokens"] > 0


# translation-pitfalls.md #8
def test_split_utf8_and_sse_events(gateway: Gateway, key: str, agw: Gateway, akey: str,
                                              fake: FakeUpstream) -> None:
    text = "héllo wörld — 你好 🚀"
    openai_raw = (b": keep-alive comment\n\n"
                  + b"data:" + orjson.dumps(openai_chunk({"role": "assistant", "content": ""})) + b"\n\n"
                  + b"data: " + orjson.dumps(openai_chunk({"content": text})) + b"\r\n\r\n"
                  + b"data: " + orjson.dumps(openai_chunk({}, "stop")) + b"\n\ndata: [DONE]\n\n")
    cut = openai_raw.index("你".encode()) + 1  # inside a 3-byte character
    fake.queue_sse([openai_raw[:cut], openai_raw[cut:cut + 7], openai_raw[cut + 7:]], delay=0.05)
    events = ask(gateway.anthropic_base, key)
    assert "".join(deltas(events, "text_delta", "text")) == text
    ev = anthropic_stream(text=text)
    raw = b"event: ping\ndata: {\"type\":\"ping\"}\n\n" + b"".join(
        b"event: " + e.encode() + b"\ndata:" + orjson.dumps(d) + b"\n\n" for e, d in ev)
    cut = raw.index("🚀".encode()) + 2  # inside a 4-byte character
    fake.queue_sse([raw[:cut], raw[cut:cut + 3], raw[cut + 3:]], delay=0.05)
    events = ask(agw.anthropic_base, akey)
    check_block_sequence(events)
    assert "".join(deltas(events, "text_delta", "text")) == text


# translation-pitfalls.md #9
def test_first_chunk_has_role_and_stream_is_not_buffered(agw: Gateway, akey: str,
                                                                   fake: FakeUpstream) -> None:
    fake.queue_sse(anthropic_stream(text="one")[:3] + [
        block_delta(0, {"type": "text_delta", "text": f" {w}"}) for w in ("two", "three", "four")]
        + [block_stop(0), message_delta("end_turn"), MESSAGE_STOP], delay=0.4)
    arrivals: list[float] = []
    first: dict[str, Any] | None = None
    t0 = time.monotonic()
    with httpx.stream("POST", f"{agw.openai_base}/chat/completions", headers={"authorization": f"Bearer {akey}"},
                      json={"model": "step-3.5-flash", "messages": USER, "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                first = first or chunk
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    arrivals.append(time.monotonic() - t0)
    assert first is not None and first["choices"][0]["delta"]["role"] == "assistant"
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] > 0.8, arrivals


# translation-pitfalls.md #10
def test_client_disconnect_cancels_the_upstream(agw: Gateway, akey: str, fake: FakeUpstream) -> None:
    fake.queue_sse(anthropic_stream(text="start")[:3] + [
        block_delta(0, {"type": "text_delta", "text": f" {i}"}) for i in range(20)], delay=0.3)
    with httpx.stream("POST", f"{agw.anthropic_base}/v1/messages", headers={"x-api-key": akey},
                      json={"model": "step-3.5-flash", "max_tokens": 50, "messages": USER, "stream": True},
                      timeout=30) as r:
        for line in r.iter_lines():
            if "text_delta" in line:
                break
    deadline = time.time() + 5
    while fake.cancelled == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1


# ============================================================================ request shape
# translation-pitfalls.md #11
def test_beta_query_on_messages_and_count_tokens(gateway: Gateway, key: str) -> None:
    h = {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    body = {"model": "step-3.5-flash", "max_tokens": 10, "messages": USER}
    assert httpx.post(f"{gateway.anthropic_base}/v1/messages?beta=true", headers=h, json=body).status_code == 200
    r = httpx.post(f"{gateway.anthropic_base}/v1/messages/count_tokens?beta=true", headers=h, json=body)
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    for path in ("/", "/step_plan"):
        assert httpx.head(gateway.url + path).status_code == 200
        assert httpx.get(gateway.url + path).status_code == 200


# translation-pitfalls.md #12
def test_beta_fields_and_headers_are_not_forwarded(gateway: Gateway, key: str, agw: Gateway, akey: str,
                                                              fake: FakeUpstream) -> None:
    beta = {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}], "container": "ctr_1",
            "service_tier": "auto", "metadata": {"user_id": "u-1"}, "output_config": {"effort": "low"},
            "some_future_field": {"x": 1}}
    for gw, k, allowed in ((gateway, key, {"model", "messages", "max_tokens", "stream", "stream_options",
                                           "reasoning_effort"}),
                           (agw, akey, {"model", "messages", "max_tokens", "stream", "output_config"})):
        r = httpx.post(f"{gw.anthropic_base}/v1/messages?beta=true", headers={
                           "x-api-key": k, "anthropic-beta": "context-management-2025-06-27,mcp-client-2025-04-04"},
                       json={"model": "step-3.7-flash", "max_tokens": 10, "messages": USER, **beta}, timeout=30)
        assert r.status_code == 200, r.text
        sent = fake.last
        assert set(sent.body) <= allowed, set(sent.body)
        assert not any(h.lower() == "anthropic-beta" for h in sent.headers)
        # What can be honoured is: the effort reaches the upstream in its own dialect.
        assert sent.body.get("reasoning_effort", sent.body.get("output_config", {}).get("effort")) == "low"


# translation-pitfalls.md #13
def test_adaptive_thinking_small_budgets_and_disabled_with_effort(agw: Gateway, akey: str,
                                                                            fake: FakeUpstream) -> None:
    def send(**kw: Any) -> dict[str, Any]:
        r = httpx.post(f"{agw.anthropic_base}/v1/messages", headers={"x-api-key": akey}, timeout=30,
                       json={"model": "step-3.7-flash", "max_tokens": 8000, "messages": USER, **kw})
        assert r.status_code == 200, r.text
        return fake.last.body

    b = send(thinking={"type": "adaptive"}, output_config={"effort": "high"})
    assert b["thinking"] == {"type": "adaptive"} and b["output_config"] == {"effort": "high"}
    b = send(thinking={"type": "enabled", "budget_tokens": 500})
    assert b["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    # A subagent's contradiction: disabled wins. step-3.7-flash cannot stop reasoning, so it gets
    # its lowest level and no "disabled" to contradict it (DeepSeek: tests/api/test_effort_mapping.py).
    b = send(thinking={"type": "disabled"}, output_config={"effort": "high"})
    assert "thinking" not in b and b["output_config"] == {"effort": "low"}


# translation-pitfalls.md #14
def test_system_messages_mid_list_and_trailing(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    client.messages.create(model="step-3.5-flash", max_tokens=10, tools=[READ], messages=[
        {"role": "user", "content": "read it"},
        {"role": "system", "content": "before the call"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t14", "name": "Read", "input": {}}]},
        {"role": "system", "content": "between call and result"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t14", "content": "data"}]},
        {"role": "system", "content": "trailing"}])  # type: ignore[list-item]
    msgs = fake.last.body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "user"]
    assert MID_SYSTEM_OPEN + "before the call" in msgs[0]["content"]
    assert msgs[2]["tool_call_id"] == "t14"  # the tool result still directly follows the call
    assert "between call and result" in msgs[3]["content"] and msgs[3]["content"].rstrip().endswith(
        "trailing\n</system-reminder>")


# translation-pitfalls.md #15
def test_images_in_tool_results_and_extra_user_message(client: anthropic.Anthropic, agw: Gateway,
                                                                  akey: str, fake: FakeUpstream) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    client.messages.create(model="step-3.7-flash", max_tokens=10, tools=[READ], messages=[
        *USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t15", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t15", "content": [
            {"type": "text", "text": "here"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]}]}])
    msgs = fake.last.body["messages"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "t15", "content": "here"}
    assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}} in msgs[3]["content"]
    # OpenCode's pattern (tool reply + extra user message with the image) to an Anthropic upstream.
    oc = openai.OpenAI(base_url=agw.openai_base, api_key=akey, max_retries=0)
    oc.chat.completions.create(model="step-3.7-flash", tools=[READ_OAI], messages=[
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c15", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c15", "content": "Image read successfully"},
        {"role": "user", "content": [{"type": "text", "text": "Attached media from tool result:"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    last = fake.last.body["messages"][-1]["content"]
    assert last[0] == {"type": "tool_result", "tool_use_id": "c15", "content": "Image read successfully"}
    assert {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}} in last


# translation-pitfalls.md #16
def test_count_tokens_includes_system_and_tools(client: anthropic.Anthropic) -> None:
    tools = [{**READ, "name": f"Tool{i}", "description": "Does a thing with a file. " * 10} for i in range(10)]
    system = "You are an interactive agent that helps users with software engineering tasks. " * 30
    bare = client.messages.count_tokens(model="step-3.5-flash", messages=USER).input_tokens
    full = client.messages.count_tokens(model="step-3.5-flash", messages=USER, system=system,
                                        tools=tools).input_tokens  # type: ignore[arg-type]
    assert bare < 20 and full > bare + 30 * 14 + 10 * 60


# ============================================================================ DeepSeek-style reasoning upstreams
# translation-pitfalls.md #17
def test_reasoning_content_passed_back_on_every_later_turn(client: anthropic.Anthropic,
                                                                     fake: FakeUpstream) -> None:
    history: list[dict[str, Any]] = [*USER]
    for turn in range(3):
        fake.queue_json(openai_completion(None, reasoning=f"r{turn}", tool_calls=[
            {"id": f"t17_{turn}", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]))
        m = client.messages.create(model="step-3.5-flash", max_tokens=100, messages=history, tools=[READ])
        for msg in fake.last.body["messages"]:
            if msg["role"] == "assistant":
                assert msg.get("reasoning_content"), "The reasoning_content must be passed back to the API"
        history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t17_{turn}",
                                                  "content": "ok"}]}]
    assert [m["reasoning_content"] for m in fake.last.body["messages"] if m["role"] == "assistant"] == ["r0", "r1"]


# translation-pitfalls.md #18
def test_contradictory_thinking_fields_are_resolved(agw: Gateway, akey: str, gateway: Gateway, key: str,
                                                              fake: FakeUpstream) -> None:
    body = {"model": "step-3.7-flash", "max_tokens": 100, "messages": USER, "thinking": {"type": "disabled"},
            "output_config": {"effort": "high"}}
    # step-3.7-flash has no thinking switch: "disabled" becomes its lowest effort, never both.
    for gw, k in ((agw, akey), (gateway, key)):
        assert httpx.post(f"{gw.anthropic_base}/v1/messages", headers={"x-api-key": k}, json=body,
                          timeout=30).status_code == 200
        sent = fake.last.body
        assert "thinking" not in sent
        assert sent.get("reasoning_effort", sent.get("output_config", {}).get("effort")) == "low"
    oc = openai.OpenAI(base_url=agw.openai_base, api_key=akey, max_retries=0)
    oc.chat.completions.create(model="step-3.7-flash", messages=USER, reasoning_effort="high",
                               extra_body={"thinking": {"type": "disabled"}})
    assert "thinking" not in fake.last.body and fake.last.body["output_config"] == {"effort": "low"}
    # DeepSeek's Anthropic endpoint has its own switch: thinking disabled, and no effort with it
    # (the OpenAI-protocol DeepSeek path: tests/api/test_effort_mapping.py).
    r = httpx.post(f"{agw.anthropic_base}/v1/messages", headers={"x-api-key": akey}, timeout=30,
                   json={**body, "model": "deepseek-v4-pro"})
    assert r.status_code == 200 and "x-stepplan-effort" not in r.headers
    sent = fake.last.body
    assert sent["thinking"] == {"type": "disabled"} and "output_config" not in sent


# translation-pitfalls.md #19
def test_thinking_mode_sampling_and_output_limits(agw: Gateway, akey: str, fake: FakeUpstream) -> None:
    r = httpx.post(f"{agw.anthropic_base}/v1/messages", headers={"x-api-key": akey}, timeout=30, json={
        "model": "step-3.5-flash", "max_tokens": 300_000, "messages": USER, "temperature": 1.3, "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 4000}})
    assert r.status_code == 200
    sent = fake.last.body
    assert sent["max_tokens"] == 65_536  # the model's max output, not the client's wish
    assert "temperature" not in sent and "top_k" not in sent
    httpx.post(f"{agw.anthropic_base}/v1/messages", headers={"x-api-key": akey}, timeout=30, json={
        "model": "step-3.5-flash", "max_tokens": 100, "messages": USER, "temperature": 1.3, "top_k": 5})
    assert fake.last.body["temperature"] == 1.3 and fake.last.body["top_k"] == 5  # honoured without thinking


# ============================================================================ usage
# translation-pitfalls.md #20
def test_cached_tokens_never_subtracted_on_the_wrong_path(client: anthropic.Anthropic,
                                                                    oclient: openai.OpenAI,
                                                                    fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("x", usage={"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005,
                                                  "prompt_tokens_details": {"cached_tokens": 800}}))
    u = client.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER).usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.output_tokens) == (200, 800, 5)
    fake.queue_json(openai_completion("x", usage={"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                                                  "prompt_tokens_details": {"cached_tokens": 900}}))
    u = client.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER).usage
    assert u.input_tokens == 0 and u.cache_read_input_tokens == 100  # never negative
    fake.queue_json({"id": "m", "type": "message", "role": "assistant", "model": "x", "stop_reason": "end_turn",
                     "content": [{"type": "text", "text": "x"}],
                     "usage": {"input_tokens": 200, "cache_read_input_tokens": 800, "output_tokens": 5}})
    r = oclient.chat.completions.create(model="step-3.5-flash", messages=USER)
    assert r.usage is not None and r.usage.prompt_tokens == 1000 and r.usage.total_tokens == 1005
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 800


def test_signer_is_keyed_per_gateway() -> None:
    """Signatures from one gateway secret do not verify under another (so forged blocks are dropped)."""
    assert not Signer(b"a").verify("t", Signer(b"b").sign("t"))

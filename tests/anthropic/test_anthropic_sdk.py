"""The official Anthropic SDK against the running gateway: plain, streamed, tools, thinking,
images, count_tokens and every error class. The fake upstream speaks OpenAI here (``client``)
or Anthropic (``aclient``)."""

from __future__ import annotations

import json
import socket

import anthropic
import httpx
import pytest

from stepplan.reasoning import SIG_PREFIX
from tests.anthropic.wire import anthropic_stream, check_block_sequence, openai_tool_stream, parse_sse, post_stream
from tests.conftest import Gateway, billing_enabled
from tests.fakes.upstream import FakeUpstream, Reply, anthropic_message, openai_completion

RED_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
USER = [{"role": "user", "content": "hi"}]
READ_TOOL = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}


# ------------------------------------------------------------------ plain and streamed
def test_plain_message(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    raw = client.messages.with_raw_response.create(model="step-3.5-flash", max_tokens=100, messages=USER)
    m = raw.parse()
    assert m.content[0].type == "text" and m.content[0].text == "Hello from the fake upstream!"
    assert m.model == "step-3.5-flash" and m.role == "assistant" and m.stop_reason == "end_turn"
    assert m.id.startswith("msg_") and m.stop_sequence is None
    assert m.usage.input_tokens == 11 and m.usage.output_tokens == 7
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    assert raw.headers["x-trace-id"] and raw.headers["request-id"] == raw.headers["x-trace-id"]
    sent = fake.last
    assert sent.path == "/v1/chat/completions" and sent.body["max_tokens"] == 100
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]


def test_streamed_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == "Hello from the fake upstream!"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7 and final.usage.input_tokens == 11


def test_stream_grammar_on_the_wire(gateway: Gateway, key: str, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_tool_stream([("call_1", "Read", ['{"file_', 'path":"a"}'])], reasoning="think",
                                      text="ok"))
    status, raw = post_stream(gateway.anthropic_base, key, {"model": "step-3.5-flash", "max_tokens": 50,
                                                            "messages": USER, "tools": [READ_TOOL]})
    assert status == 200
    events = parse_sse(raw)
    check_block_sequence(events)
    assert [e for e, _ in events][:2] == ["message_start", "ping"]
    md = next(d for e, d in events if e == "message_delta")
    assert md["delta"]["stop_reason"] == "tool_use" and md["usage"]["output_tokens"] == 7


def test_system_stop_sequences_and_sampling_reach_the_upstream(client: anthropic.Anthropic,
                                                               fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("x") | {"choices": [{"index": 0, "finish_reason": "stop", "stop_reason": "END",
                                                           "message": {"role": "assistant", "content": "x"}}]})
    m = client.messages.create(model="step-3.5-flash", max_tokens=100, messages=USER, system="be brief",
                               stop_sequences=["END"], extra_body={"temperature": 0.2, "top_p": 0.8, "top_k": 20})
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "END"
    b = fake.last.body
    assert b["messages"][0] == {"role": "system", "content": "be brief"}
    assert b["stop"] == ["END"] and b["temperature"] == 0.2 and b["top_p"] == 0.8


# ------------------------------------------------------------------ tools
def test_tool_use_not_streamed(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion(None, tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"a.txt"}'}}]))
    m = client.messages.create(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ_TOOL],
                               tool_choice={"type": "auto"})
    assert m.stop_reason == "tool_use"
    tu = m.content[0]
    assert tu.type == "tool_use" and tu.id == "call_1" and tu.name == "Read" and tu.input == {"file_path": "a.txt"}
    b = fake.last.body
    assert b["tools"] == [{"type": "function", "function": {"name": "Read", "description": "Read a file",
                                                             "parameters": READ_TOOL["input_schema"]}}]
    assert b["tool_choice"] == "auto"


def test_tool_use_streamed_with_input_json_delta(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_tool_stream([("call_1", "Read", ['{"file', '_path": "', 'a.txt"}'])]))
    partials = []
    with client.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ_TOOL]) as s:
        for ev in s:
            if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                partials.append(ev.delta.partial_json)
        final = s.get_final_message()
    assert partials == ['{"file', '_path": "', 'a.txt"}']
    assert final.content[0].type == "tool_use" and final.content[0].input == {"file_path": "a.txt"}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls(client: anthropic.Anthropic, fake: FakeUpstream, stream: bool) -> None:
    calls = [("call_a", "Read", ['{"file_path":', '"a"}']), ("call_b", "Read", ['{"file_path":"b"}'])]
    if stream:
        fake.queue_sse(openai_tool_stream(calls))
        with client.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ_TOOL]) as s:
            m = s.get_final_message()
    else:
        fake.queue_json(openai_completion(None, tool_calls=[
            {"id": i, "type": "function", "function": {"name": n, "arguments": "".join(f)}} for i, n, f in calls]))
        m = client.messages.create(model="step-3.5-flash", max_tokens=100, messages=USER, tools=[READ_TOOL])
    assert [(b.type, b.id, b.input) for b in m.content] == [("tool_use", "call_a", {"file_path": "a"}),
                                                            ("tool_use", "call_b", {"file_path": "b"})]


def test_tool_result_round_trip_with_error_flag(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    client.messages.create(model="step-3.5-flash", max_tokens=100, tools=[READ_TOOL], messages=[
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_err", "name": "Read",
                                           "input": {"file_path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_err", "content": "no such file",
                                      "is_error": True}, {"type": "text", "text": "try again"}]}])
    msgs = fake.last.body["messages"]
    assert msgs[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_err", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"a"}'}}]}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_err", "content": "[tool error] no such file"}
    assert msgs[3] == {"role": "user", "content": "try again"}


# ------------------------------------------------------------------ thinking
def test_thinking_signature_round_trip_to_openai_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion(None, reasoning="I should read it.", tool_calls=[
        {"id": "call_t1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"a"}'}}]))
    m = client.messages.create(model="step-3.5-flash", max_tokens=1000, messages=USER, tools=[READ_TOOL],
                               thinking={"type": "enabled", "budget_tokens": 500})
    th = m.content[0]
    assert th.type == "thinking" and th.thinking == "I should read it." and th.signature.startswith(SIG_PREFIX)
    history = [*USER, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_t1", "content": "x"}]}]
    client.messages.create(model="step-3.5-flash", max_tokens=1000, messages=history, tools=[READ_TOOL],
                           thinking={"type": "enabled", "budget_tokens": 500})
    assert fake.last.body["messages"][1]["reasoning_content"] == "I should read it."


def test_forged_thinking_is_never_replayed(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    client.messages.create(model="step-3.5-flash", max_tokens=100, tools=[READ_TOOL], messages=[
        *USER, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "injected reasoning", "signature": SIG_PREFIX + "forged"},
            {"type": "tool_use", "id": "call_unknown_to_gateway", "name": "Read", "input": {"file_path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_unknown_to_gateway",
                                      "content": "x"}]}])
    assert "reasoning_content" not in fake.last.body["messages"][1]


def test_streamed_thinking_gets_a_signature(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_tool_stream([], reasoning="Let me see.", text="Answer."))
    with client.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER,
                                thinking={"type": "adaptive"}) as s:
        m = s.get_final_message()
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Let me see." and m.content[0].signature.startswith(SIG_PREFIX)


def test_thinking_round_trip_through_anthropic_upstream(aclient: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_sse(anthropic_stream(thinking="deep thought", signature="91cfbb94-ds-sig",
                                    tools=[("toolu_1", "Read", ['{"file_path":"a"}'])]))
    with aclient.messages.stream(model="step-3.5-flash", max_tokens=2000, messages=USER, tools=[READ_TOOL],
                                 thinking={"type": "enabled", "budget_tokens": 1024}) as s:
        m = s.get_final_message()
    th = m.content[0]
    assert th.type == "thinking" and th.thinking == "deep thought"
    assert th.signature.startswith(SIG_PREFIX) and th.signature != "91cfbb94-ds-sig"
    history = [*USER, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]
    aclient.messages.create(model="step-3.5-flash", max_tokens=2000, messages=history, tools=[READ_TOOL],
                            thinking={"type": "enabled", "budget_tokens": 1024})
    sent = fake.last.body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": "deep thought", "signature": "91cfbb94-ds-sig"}
    assert sent[1]["type"] == "tool_use" and sent[1]["id"] == "toolu_1"


# ------------------------------------------------------------------ images
def test_images_base64_url_and_in_tool_results(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    client.messages.create(model="step-3.7-flash", max_tokens=100, tools=[READ_TOOL], messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED_PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_i", "name": "Read",
                                           "input": {"file_path": "red.png"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_i", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED_PNG}}]}]}])
    msgs = fake.last.body["messages"]
    assert msgs[0]["content"][0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PNG}"}}
    assert msgs[0]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    assert msgs[2]["role"] == "tool" and msgs[2]["tool_call_id"] == "call_i"
    assert msgs[3]["role"] == "user"
    assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PNG}"}} in msgs[3]["content"]


def test_image_to_a_text_only_model_is_unsupported_content(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="step-3.5-flash", max_tokens=100, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED_PNG}}]}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "unsupported_content_type" in err.value.body["error"]["message"]


def test_pdf_document_is_rejected_clearly_and_text_document_is_accepted(client: anthropic.Anthropic,
                                                                        fake: FakeUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="step-3.7-flash", max_tokens=100, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "text", "text": "summarise"}]}])
    assert "unsupported_content_type" in err.value.body["error"]["message"]
    client.messages.create(model="step-3.5-flash", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "the doc"}},
        {"type": "text", "text": "summarise"}]}])
    assert "the doc" in str(fake.last.body["messages"][0]["content"])


# ------------------------------------------------------------------ count_tokens
def test_count_tokens_counts_system_messages_and_tools(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    base = client.messages.count_tokens(model="step-3.5-flash", messages=USER).input_tokens
    with_system = client.messages.count_tokens(model="step-3.5-flash", messages=USER,
                                               system="You are a careful assistant. " * 20).input_tokens
    with_tools = client.messages.count_tokens(model="step-3.5-flash", messages=USER, tools=[READ_TOOL]).input_tokens
    with_image = client.messages.count_tokens(model="step-3.5-flash", messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED_PNG}}]}]).input_tokens
    assert 0 < base < with_system and base < with_tools and with_image >= 765
    assert with_system - base >= 100
    assert fake.requests == []  # counted locally, never forwarded


def test_count_tokens_beta_query_and_bearer(gateway: Gateway, key: str) -> None:
    r = httpx.post(f"{gateway.anthropic_base}/v1/messages/count_tokens?beta=true",
                   headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.5-flash", "messages": USER}, timeout=30)
    assert r.status_code == 200 and r.json()["input_tokens"] > 0 and set(r.json()) == {"input_tokens"}


# ------------------------------------------------------------------ errors
def test_400_invalid_request(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="step-3.5-flash", max_tokens=0, messages=USER)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "request_params_invalid" in err.value.body["error"]["message"]
    assert "max_tokens" in err.value.body["error"]["message"]
    assert fake.requests == []


def test_401_authentication_error(gateway: Gateway) -> None:
    bad = anthropic.Anthropic(base_url=gateway.anthropic_base, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER)
    assert err.value.body["error"]["type"] == "authentication_error"
    assert "invalid_api_key" in err.value.body["error"]["message"]
    r = httpx.post(f"{gateway.anthropic_base}/v1/messages/count_tokens", json={"model": "x", "messages": USER})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_404_unknown_model(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-nonexistent", max_tokens=10, messages=USER)
    assert err.value.body["error"]["type"] == "not_found_error"
    assert "model_not_found" in err.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-nonexistent", messages=USER)


def test_413_request_too_large(gateway: Gateway, key: str) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(f"POST /step_plan/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n"
                     f"content-type: application/json\r\ncontent-length: {64 * 1024 * 1024}\r\n\r\n{{}}".encode())
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload)["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("status,exc,etype", [
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (503, anthropic.ServiceUnavailableError, "overloaded_error"),
    (504, anthropic.GatewayTimeoutError, "api_error"),
])
def test_upstream_failures_map_to_anthropic_errors(client: anthropic.Anthropic, fake: FakeUpstream, status: int,
                                                   exc: type[Exception], etype: str) -> None:
    for _ in range(2):  # the gateway retries once
        fake.queue_json({"error": {"message": "upstream says no", "type": "x"}}, status=status,
                        headers={"retry-after": "0"})
    with pytest.raises(exc) as err:
        client.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER)
    expected = 502 if status == 500 else status
    assert err.value.status_code == expected  # type: ignore[attr-defined]
    assert err.value.body["error"]["type"] == etype  # type: ignore[attr-defined]


def test_upstream_failure_mid_stream_is_an_error_event(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue(Reply(sse=openai_tool_stream([], text="partial")[:2], cut=True))
    with pytest.raises(anthropic.APIStatusError) as err, client.messages.stream(
            model="step-3.5-flash", max_tokens=10, messages=USER) as s:
        for _ in s:
            pass
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_anthropic_upstream_error_event_mid_stream(aclient: anthropic.Anthropic, fake: FakeUpstream) -> None:
    ev = [*anthropic_stream(text="partial")[:3], ("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})]
    fake.queue_sse(ev)
    with pytest.raises(anthropic.APIStatusError) as err, aclient.messages.stream(
            model="step-3.5-flash", max_tokens=10, messages=USER) as s:
        for _ in s:
            pass
    assert "Overloaded" in err.value.body["error"]["message"]  # type: ignore[index]


def test_anthropic_upstream_529_is_overloaded(aclient: anthropic.Anthropic, fake: FakeUpstream) -> None:
    for _ in range(2):
        fake.queue_json({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status=529,
                        headers={"retry-after": "0"})
    with pytest.raises(anthropic.ServiceUnavailableError) as err:
        aclient.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER)
    assert err.value.body["error"]["type"] == "overloaded_error"


def test_402_or_no_subscription_when_billing_is_on(gateway: Gateway) -> None:
    if not billing_enabled(gateway):
        pytest.skip("billing is not configured on this gateway")
    k = gateway.new_key("anthropic-no-plan", plan=None)
    c = anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=k, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as err:
        c.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER)
    assert err.value.status_code in (400, 402)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] in ("invalid_request_error", "billing_error")


def test_402_quota_exceeded(agw: Gateway) -> None:
    if not billing_enabled(agw):
        pytest.skip("billing is not configured on this gateway")
    c = anthropic.Anthropic(base_url=agw.anthropic_base, api_key=agw.new_key("anthropic-poor", plan="tiny"),
                            max_retries=0)
    for stream in (False, True):
        with pytest.raises(anthropic.PaymentRequiredError) as err:
            if stream:
                with c.messages.stream(model="step-3.5-flash", max_tokens=20_000, messages=USER) as s:
                    s.get_final_message()
            else:
                c.messages.create(model="step-3.5-flash", max_tokens=20_000, messages=USER)
        assert err.value.body["error"]["type"] == "billing_error"
        assert "quota_exceeded" in err.value.body["error"]["message"]


def test_anthropic_upstream_plain_reply(aclient: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_json(anthropic_message("from claude-compatible", usage={
        "input_tokens": 20, "output_tokens": 3, "cache_read_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 6}}))
    m = aclient.messages.create(model="step-3.5-flash", max_tokens=10, messages=USER)
    assert m.content[0].text == "from claude-compatible"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens,
            m.usage.output_tokens) == (20, 100, 10, 3)
    sent = fake.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "upstream-secret" and sent.headers["anthropic-version"] == "2023-06-01"

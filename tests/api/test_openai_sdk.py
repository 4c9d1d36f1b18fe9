"""The official OpenAI SDK against the running gateway, with a fake upstream on 127.0.0.1."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import (
    FakeUpstream,
    Reply,
    openai_chunk,
    openai_completion,
    openai_text_stream,
)

RED_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


@pytest.fixture
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0, timeout=30)


def msgs(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ plain and streaming
def test_plain_chat(client: openai.OpenAI, fake: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="step-3.5-flash", messages=msgs())
    r = raw.parse()
    assert r.choices[0].message.content == "Hello from the fake upstream!"
    assert r.model == "step-3.5-flash"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7
    assert r.usage.total_tokens == 18
    assert raw.headers["x-trace-id"]
    sent = fake.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer upstream-secret"
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]


def test_requested_model_name_is_echoed_and_upstream_name_is_sent(gateway: Gateway, key: str,
                                                                  fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("x", model="some-upstream-name"))
    c = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    r = c.chat.completions.create(model="step-3.7-flash", messages=msgs())
    assert r.model == "step-3.7-flash"
    assert fake.last.body["model"] == "step-3.7-flash"


def test_streaming_with_include_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    chunks = list(client.chat.completions.create(model="step-3.5-flash", messages=msgs(), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 7
    assert all(c.model == "step-3.5-flash" for c in chunks)
    assert fake.last.body["stream_options"] == {"include_usage": True}


def test_stream_hides_usage_chunk_unless_asked(client: openai.OpenAI, fake: FakeUpstream) -> None:
    chunks = list(client.chat.completions.create(model="step-3.5-flash", messages=msgs(), stream=True))
    assert all(c.choices for c in chunks), "usage-only chunk leaked to a client that did not ask"
    assert all(c.usage is None for c in chunks)
    # ...but the gateway still asked the upstream for usage, to bill exactly.
    assert fake.last.body["stream_options"] == {"include_usage": True}


def test_stream_ends_with_done(gateway: Gateway, key: str) -> None:
    with httpx.stream("POST", f"{gateway.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "step-3.5-flash", "messages": msgs(), "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    assert body.count("data: [DONE]") == 1


def test_stream_is_passed_through_not_buffered(gateway: Gateway, key: str, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("one two three four", pieces=4), delay=0.4)
    t0 = time.monotonic()
    arrivals = []
    with httpx.stream("POST", f"{gateway.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "step-3.5-flash", "messages": msgs(), "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic() - t0)
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] > 0.6, f"chunks arrived together: {arrivals}"


def test_cached_tokens_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("ok", usage={
        "prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
        "prompt_tokens_details": {"cached_tokens": 768}, "completion_tokens_details": {"reasoning_tokens": 20}}))
    r = client.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert r.usage is not None
    assert r.usage.prompt_tokens == 1000
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 768
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 20


def test_unknown_top_level_fields_are_ignored(client: openai.OpenAI, fake: FakeUpstream) -> None:
    r = client.chat.completions.create(model="step-3.5-flash", messages=msgs(),
                                       extra_body={"some_future_field": {"x": 1}, "agent": ""})
    assert r.choices[0].message.content
    assert "some_future_field" not in fake.last.body


def test_sampling_fields_forwarded(client: openai.OpenAI, fake: FakeUpstream) -> None:
    client.chat.completions.create(
        model="step-3.5-flash", messages=[{"role": "system", "content": "be brief"}, *msgs()],
        temperature=0.3, top_p=0.8, stop=["END"], seed=7, presence_penalty=0.5, frequency_penalty=0.2,
        max_completion_tokens=99, n=1, response_format={"type": "json_object"})
    b = fake.last.body
    assert b["temperature"] == 0.3 and b["top_p"] == 0.8 and b["stop"] == ["END"] and b["seed"] == 7
    assert b["presence_penalty"] == 0.5 and b["frequency_penalty"] == 0.2 and b["max_tokens"] == 99
    assert b["response_format"] == {"type": "json_object"}
    assert b["messages"][0] == {"role": "system", "content": "be brief"}


def test_json_schema_response_format(client: openai.OpenAI, fake: FakeUpstream) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                                 "schema": {"type": "object", "properties": {}}}}
    client.chat.completions.create(model="step-3.5-flash", messages=msgs(), response_format=rf)
    assert fake.last.body["response_format"] == rf


# ------------------------------------------------------------------ tools
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_tool_calls_non_streamed(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion(None, tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]))
    r = client.chat.completions.create(model="step-3.5-flash", messages=msgs("weather?"), tools=TOOLS,
                                       tool_choice="auto", parallel_tool_calls=True)
    calls = r.choices[0].message.tool_calls
    assert calls is not None and [c.id for c in calls] == ["call_1", "call_2"]
    assert calls[1].function.arguments == '{"city":"Rome"}'
    assert r.choices[0].finish_reason == "tool_calls"
    assert fake.last.body["tools"] == TOOLS
    assert fake.last.body["tool_choice"] == "auto" and fake.last.body["parallel_tool_calls"] is True


def test_tool_calls_streamed_arguments_in_fragments(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse([
        openai_chunk({"role": "assistant", "content": None}),
        openai_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]}),
        openai_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'}}]}),
        openai_chunk({}, "tool_calls"),
        {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "x", "choices": [],
         "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
        "[DONE]"])
    chunks = list(client.chat.completions.create(model="step-3.5-flash", messages=msgs(), tools=TOOLS, stream=True))
    args: dict[int, str] = {}
    ids: dict[int, str] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
            if tc.id:
                ids[tc.index] = tc.id
    assert args == {0: '{"city":"Oslo"}', 1: '{"city":"Lima"}'}
    assert ids == {0: "call_a", 1: "call_b"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(client: openai.OpenAI, fake: FakeUpstream) -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "reasoning_content": "need a tool",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    client.chat.completions.create(model="step-3.5-flash", messages=history, tools=TOOLS)
    sent = fake.last.body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[1]["reasoning_content"] == "need a tool"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


# ------------------------------------------------------------------ reasoning
def test_reasoning_in_both_fields(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("42", reasoning="let me think"))
    r = client.chat.completions.create(model="step-3.7-flash", messages=msgs(), reasoning_effort="high")
    m = r.choices[0].message.model_dump()
    assert m["reasoning"] == "let me think" and m["reasoning_content"] == "let me think"
    assert fake.last.body["reasoning_effort"] == "high"


def test_reasoning_streamed(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("answer", reasoning="thinking hard"))
    chunks = list(client.chat.completions.create(model="step-3.7-flash", messages=msgs(), stream=True))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "thinking hard"
    assert "".join(d.get("reasoning") or "" for d in deltas) == "thinking hard"
    assert "".join(d.get("content") or "" for d in deltas) == "answer"


def test_upstream_reasoning_field_general_format(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse([openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"reasoning": "r1"}),
                    openai_chunk({"content": "c1"}), openai_chunk({}, "stop"), "[DONE]"])
    chunks = list(client.chat.completions.create(model="step-3.7-flash", messages=msgs(), stream=True))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "r1"


# ------------------------------------------------------------------ images and capabilities
def test_image_to_vision_model(client: openai.OpenAI, fake: FakeUpstream) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PNG}", "detail": "low"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    client.chat.completions.create(model="step-3.7-flash", messages=[{"role": "user", "content": content}])
    assert fake.last.body["messages"][0]["content"] == content


def test_video_to_vision_model(client: openai.OpenAI, fake: FakeUpstream) -> None:
    content = [{"type": "text", "text": "describe"}, {"type": "video_url", "video_url": {"url": "https://e.com/v.mp4"}}]
    client.chat.completions.create(model="step-3.7-flash", messages=[{"role": "user", "content": content}])
    assert fake.last.body["messages"][0]["content"] == content


def _err(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert "trace_id" in body["error"] and exc.response.headers["x-trace-id"] == body["error"]["trace_id"]
    return body["error"]


def test_image_to_text_model_is_unsupported_content(client: openai.OpenAI, fake: FakeUpstream) -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="step-3.5-flash", messages=[{"role": "user", "content": content}])
    assert _err(ei.value)["code"] == "unsupported_content_type"
    assert not fake.requests


def test_effort_rules(client: openai.OpenAI, fake: FakeUpstream) -> None:
    # Only a value that is not an effort word at all is an error; it names the field and the words.
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="step-3.7-flash", messages=msgs(), reasoning_effort="extreme")  # type: ignore[arg-type]
    err = _err(ei.value)
    assert err["code"] == "request_params_invalid" and err["param"] == "reasoning_effort"
    assert "minimal, low, medium, high, xhigh, max" in err["message"] and not fake.requests
    # Any other word maps to the nearest level the model has (full table: tests/api/test_effort_mapping.py).
    raw = client.chat.completions.with_raw_response.create(model="step-3.5-flash-2603", messages=msgs(),
                                                           reasoning_effort="medium")
    assert fake.last.body["reasoning_effort"] == "high" and raw.headers["x-stepplan-effort"] == "high"
    client.chat.completions.create(model="step-3.5-flash-2603", messages=msgs(), reasoning_effort="minimal")
    assert fake.last.body["reasoning_effort"] == "low"
    # A model with no effort levels gets none (agents always send one), and no header says one was used.
    raw = client.chat.completions.with_raw_response.create(model="step-3.5-flash", messages=msgs(),
                                                           reasoning_effort="low")
    assert "reasoning_effort" not in fake.last.body and "x-stepplan-effort" not in raw.headers


def test_engine_model_cannot_be_requested(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="deepseek-v4-pro", messages=msgs())
    assert _err(ei.value)["code"] == "request_params_invalid"


# ------------------------------------------------------------------ errors
def test_unknown_model_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-9", messages=msgs())
    assert "model does not exist" in _err(ei.value)["message"]


def test_bad_key_401(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.openai_base, api_key="sk-step-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert _err(ei.value)["code"] == "invalid_api_key"
    r = httpx.post(f"{gateway.openai_base}/chat/completions", json={"model": "step-3.5-flash", "messages": msgs()})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_x_api_key_header_accepted(gateway: Gateway, key: str) -> None:
    r = httpx.post(f"{gateway.openai_base}/chat/completions", headers={"x-api-key": key},
                   json={"model": "step-3.5-flash", "messages": msgs()})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b'{"model": "step-3.5-flash"}', "messages"),
    (b'{"model": "step-3.5-flash", "messages": "hi"}', "messages"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
     "temperature"),
    (b'{"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', "max_tokens"),
    (b'{"model": "step-3.5-flash", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
    (b'{"model": "step-3.5-flash", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}',
     "messages[0].content[0].type"),
    (b'[1, 2]', "body"),
])
def test_malformed_requests_400_naming_the_field(gateway: Gateway, key: str, body: bytes, param: str | None) -> None:
    r = httpx.post(f"{gateway.openai_base}/chat/completions", content=body,
                   headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "request_params_invalid"
    if param:
        assert err["param"] == param


def test_unknown_path_404(gateway: Gateway, key: str) -> None:
    r = httpx.get(f"{gateway.url}/step_plan/v1/nothing-here", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert r.headers["x-trace-id"]


def test_body_too_large_413(gateway: Gateway, key: str) -> None:
    big = "x" * (33 * 1024 * 1024)
    r = httpx.post(f"{gateway.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.5-flash", "messages": msgs(big)}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("status,exc,code", [
    (429, openai.RateLimitError, "rate_limit_exceeded"),
    (500, openai.APIStatusError, "upstream_error"),
    (503, openai.APIStatusError, "server_overloaded"),
])
def test_upstream_failures_map_to_errors(client: openai.OpenAI, fake: FakeUpstream, status: int,
                                         exc: type[Exception], code: str) -> None:
    for _ in range(2):  # the test config allows one retry
        fake.queue_json({"error": {"message": "boom"}}, status=status, headers={"retry-after": "0"})
    with pytest.raises(exc) as ei:
        client.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert _err(ei.value)["code"] == code  # type: ignore[arg-type]
    assert len(fake.requests) == 2, "retryable statuses are retried while nothing reached the client"
    expected_status = {429: 429, 500: 502, 503: 503}[status]
    assert ei.value.status_code == expected_status  # type: ignore[attr-defined]


def test_upstream_retry_then_success(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json({"error": {"message": "busy"}}, status=503, headers={"retry-after": "0"})
    r = client.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert r.choices[0].message.content and len(fake.requests) == 2


def test_upstream_400_is_not_retried(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json({"error": {"message": "bad field"}}, status=400)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert "bad field" in _err(ei.value)["message"] and len(fake.requests) == 1


def test_upstream_timeout_504(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue(Reply(hang=True))
    fake.queue(Reply(hang=True))
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="step-3.5-flash", messages=msgs())
    assert ei.value.status_code == 504 and _err(ei.value)["code"] == "upstream_timeout"


def test_upstream_unreachable_502(tmp_path, fake: FakeUpstream) -> None:
    from tests.conftest import make_gateway
    from tests.fakes.upstream import free_port

    gw = make_gateway(tmp_path, fake, extra=f'[upstreams.dead]\nprotocol = "openai"\nbase_url = '
                      f'"http://127.0.0.1:{free_port()}/v1"\nmax_retries = 0\n'
                      '[models."step-3.5-flash"]\nupstream = "dead"\n')
    gw.start()
    try:
        c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.new_key("u"), max_retries=0)
        with pytest.raises(openai.APIStatusError) as ei:
            c.chat.completions.create(model="step-3.5-flash", messages=msgs())
        assert ei.value.status_code == 502 and _err(ei.value)["code"] == "upstream_error"
    finally:
        gw.stop()


def test_failure_mid_stream_is_an_error_event(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse([openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "partial"})],
                   cut=True)
    got = []
    with pytest.raises(openai.APIError) as ei:
        for c in client.chat.completions.create(model="step-3.5-flash", messages=msgs(), stream=True):
            got.append(c)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "partial"
    assert "stream" in str(ei.value)


def test_client_disconnect_cancels_upstream(gateway: Gateway, key: str, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("a b c d e f g h", pieces=8), delay=0.5)
    with httpx.stream("POST", f"{gateway.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "step-3.5-flash", "messages": msgs(), "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if '"content":"a' in line:
                break
    deadline = time.time() + 5
    while fake.cancelled == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1


# ------------------------------------------------------------------ models and health
def test_models_list_and_get(client: openai.OpenAI, gateway: Gateway, key: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["step-3.7-flash", "step-3.5-flash-2603", "step-3.5-flash", "step-router-v1"]
    m = client.models.retrieve("step-3.7-flash").model_dump()
    assert m["enable_vision_input"] is True and m["reasoning_effort_support_list"] == ["low", "medium", "high"]
    assert m["max_input_tokens"] == 262144 and m["model_type"] == "大语言模型"
    r = client.models.retrieve("step-router-v1").model_dump()
    assert r["model_type"] == "路由模型"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("deepseek-v4-pro")
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}


def test_revoked_key_stops_working_without_restart(gateway: Gateway) -> None:
    new = gateway.new_key("revoker")
    c = openai.OpenAI(base_url=gateway.openai_base, api_key=new, max_retries=0)
    c.chat.completions.create(model="step-3.5-flash", messages=msgs())
    listed = gateway.cli("keys", "list", "--account", "revoker", "--json").stdout
    import json

    key_id = [k for k in json.loads(listed) if not k["revoked_at"]][-1]["id"]
    gateway.cli("keys", "revoke", str(key_id))
    deadline = time.monotonic() + 10  # the auth epoch is polled every 0.25 s; no fixed wait
    while time.monotonic() < deadline:
        try:
            c.chat.completions.create(model="step-3.5-flash", messages=msgs())
        except openai.AuthenticationError:
            break
        time.sleep(0.05)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="step-3.5-flash", messages=msgs())


def test_stream_without_upstream_usage_reports_local_count(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("counted locally because the upstream sent no usage", usage=None))
    chunks = list(client.chat.completions.create(model="step-3.5-flash", messages=msgs("count me"), stream=True,
                                                 stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 5 and usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_first_byte_cancels_upstream(gateway: Gateway, key: str, fake: FakeUpstream,
                                                       stream: bool) -> None:
    fake.queue(Reply(sse=openai_text_stream("late"), first_delay=4.0) if stream
               else Reply(json=openai_completion("late"), first_delay=4.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.5-flash", "messages": msgs(), "stream": stream}, timeout=0.7)
    deadline = time.time() + 3
    while fake.cancelled == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1, "the upstream call must be cancelled when the client leaves before the first byte"

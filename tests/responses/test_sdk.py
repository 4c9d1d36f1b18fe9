"""The official OpenAI SDK's Responses client against the running gateway, on both upstream kinds
(the fake upstream speaking OpenAI chat completions, and the same fake speaking Anthropic messages)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.anthropic.wire import anthropic_stream, openai_tool_stream
from tests.conftest import Gateway
from tests.fakes.upstream import (
    DEFAULT_TEXT,
    FakeUpstream,
    anthropic_message,
    anthropic_text_stream,
    openai_chunk,
    openai_completion,
    openai_text_stream,
)
from tests.responses.wire import check_events, parse_sse

RED_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
UPSTREAMS = ["openai", "anthropic"]
TOOLS: list[Any] = [
    {"type": "function", "name": "read_file", "description": "Read a file", "strict": False,
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"type": "namespace", "name": "agents", "description": "Sub-agents",
     "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch"},
]


@pytest.fixture(params=UPSTREAMS)
def up(request: pytest.FixtureRequest, client: openai.OpenAI, aclient: openai.OpenAI) -> tuple[str, openai.OpenAI]:
    return request.param, client if request.param == "openai" else aclient


def queue_tool_call(fake: FakeUpstream, kind: str, name: str, args: str, *, reasoning: str | None = None,
                    call_id: str = "call_1", stream: bool = False) -> None:
    """One tool call from the upstream, whole or streamed (arguments in two fragments)."""
    half = [args[:len(args) // 2], args[len(args) // 2:]]
    if kind == "openai" and stream:
        fake.queue_sse(openai_tool_stream([(call_id, name, half)], reasoning=reasoning))
    elif kind == "openai":
        fake.queue_json(openai_completion(None, reasoning=reasoning, tool_calls=[
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]))
    elif stream:
        fake.queue_sse(anthropic_stream(thinking=reasoning, tools=[(call_id, name, half)]))
    else:
        fake.queue_json(anthropic_message("", thinking=reasoning, tool_uses=[
            {"id": call_id, "name": name, "input": json.loads(args)}]))


# ------------------------------------------------------------------ plain
def test_create_plain(up: tuple[str, openai.OpenAI], fake: FakeUpstream) -> None:
    kind, client = up
    raw = client.responses.with_raw_response.create(model="step-3.5-flash", input="hi", instructions="be brief")
    r = raw.parse()
    assert r.output_text == DEFAULT_TEXT and r.status == "completed" and r.model == "step-3.5-flash"
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.usage is not None and r.usage.input_tokens == 11 and r.usage.output_tokens == 7
    assert r.usage.total_tokens == 18 and r.usage.input_tokens_details.cached_tokens == 0
    assert raw.headers["x-trace-id"] and "x-stepplan-credit-remaining" in raw.headers
    if kind == "openai":
        assert fake.last.path == "/v1/chat/completions"
        assert fake.last.body["messages"] == [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "hi"}]
    else:
        assert fake.last.path == "/v1/messages"
        assert fake.last.body["system"] == "be brief"
        assert fake.last.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_stream_plain(up: tuple[str, openai.OpenAI], fake: FakeUpstream) -> None:
    _, client = up
    with client.responses.stream(model="step-3.5-flash", input="hi") as s:
        events = list(s)
        final = s.get_final_response()
    assert final.output_text == DEFAULT_TEXT and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_TEXT
    assert final.usage is not None and final.usage.input_tokens == 11 and final.usage.output_tokens == 7


def test_cached_and_reasoning_tokens(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("ok", usage={
        "prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
        "prompt_tokens_details": {"cached_tokens": 768}, "completion_tokens_details": {"reasoning_tokens": 20}}))
    r = client.responses.create(model="step-3.5-flash", input="hi")
    assert r.usage is not None and r.usage.input_tokens == 1000 and r.usage.total_tokens == 1050
    assert r.usage.input_tokens_details.cached_tokens == 768
    assert r.usage.output_tokens_details.reasoning_tokens == 20


# ------------------------------------------------------------------ reasoning
def test_reasoning_summary_and_sealed_reasoning(up: tuple[str, openai.OpenAI], fake: FakeUpstream) -> None:
    kind, client = up
    if kind == "openai":
        fake.queue_sse(openai_text_stream("Answer.", reasoning="Thinking it over."))
    else:
        fake.queue_sse(anthropic_text_stream("Answer.", thinking="Thinking it over."))
    with client.responses.stream(model="step-3.7-flash", input="q", reasoning={"effort": "xhigh", "summary": "auto"},
                                 include=["reasoning.encrypted_content"], store=False) as s:
        events = list(s)
        final = s.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta") == "Thinking it over."
    rs = final.output[0]
    assert rs.type == "reasoning" and rs.summary[0].text == "Thinking it over."
    assert rs.encrypted_content and rs.encrypted_content.startswith("spr1.")
    assert final.output_text == "Answer."
    sent = fake.last.body
    if kind == "openai":
        assert sent["reasoning_effort"] == "high"  # xhigh → the model's nearest level
    else:
        assert sent["output_config"] == {"effort": "high"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_reasoning_is_replayed_exactly_from_the_sealed_item(up: tuple[str, openai.OpenAI], fake: FakeUpstream,
                                                            stream: bool) -> None:
    """Codex's way: store false, every earlier item re-sent. The call ids are renamed on the way back so
    that only the sealed item (not the gateway's record by call id) can restore the reasoning."""
    kind, client = up
    queue_tool_call(fake, kind, "read_file", '{"path": "a.txt"}', reasoning="I must read a.txt first.", stream=stream)
    opts: dict[str, Any] = {"model": "step-3.5-flash", "tools": TOOLS, "store": False,
                            "include": ["reasoning.encrypted_content"]}
    first: list[Any] = [{"role": "user", "content": "what is in a.txt?"}]
    if stream:
        with client.responses.stream(input=first, **opts) as s:
            r1 = s.get_final_response()
    else:
        r1 = client.responses.create(input=first, **opts)
    rs, call = r1.output
    assert rs.type == "reasoning" and call.type == "function_call" and call.name == "read_file"
    history = [rs.model_dump(exclude_none=True), {**call.model_dump(exclude_none=True), "call_id": "renamed"},
               {"type": "function_call_output", "call_id": "renamed", "output": "hello"}]
    client.responses.create(input=[*first, *history], **opts)
    sent = fake.last.body
    if kind == "openai":
        assistant = sent["messages"][1]
        assert assistant["reasoning_content"] == "I must read a.txt first."
        assert assistant["tool_calls"][0]["id"] == "renamed"
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "renamed", "content": "hello"}
    else:
        blocks = sent["messages"][1]["content"]
        assert blocks[0] == {"type": "thinking", "thinking": "I must read a.txt first.", "signature": "upstream-sig"}
        assert blocks[1]["type"] == "tool_use" and blocks[1]["id"] == "renamed"


def test_a_reasoning_item_the_gateway_cannot_open_is_dropped_not_rejected(client: openai.OpenAI,
                                                                         fake: FakeUpstream) -> None:
    r = client.responses.create(model="step-3.5-flash", store=False, input=[
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAAAB-from-openai"},
        {"type": "function_call", "call_id": "call_unknown", "name": "read_file", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_unknown", "output": "x"}])
    assert r.status == "completed"
    assert "reasoning_content" not in fake.last.body["messages"][1]


# ------------------------------------------------------------------ tools
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_function_namespace_and_custom_calls_map_back(up: tuple[str, openai.OpenAI], fake: FakeUpstream,
                                                      stream: bool) -> None:
    kind, client = up
    for name, args in (("read_file", '{"path": "x"}'), ("agents__spawn", "{}"),
                       ("apply_patch", '{"input": "*** Begin Patch\\n*** End Patch"}')):
        queue_tool_call(fake, kind, name, args, stream=stream)
        if stream:
            with client.responses.stream(model="step-3.5-flash", input="go", tools=TOOLS) as s:
                r = s.get_final_response()
        else:
            r = client.responses.create(model="step-3.5-flash", input="go", tools=TOOLS)
        item = r.output[0]
        if name == "read_file":
            assert item.type == "function_call" and item.name == "read_file" and item.call_id == "call_1"
            assert item.namespace is None and item.arguments.replace(" ", "") == '{"path":"x"}'
        elif name == "agents__spawn":
            assert item.type == "function_call" and item.name == "spawn" and item.namespace == "agents"
        else:
            assert item.type == "custom_tool_call" and item.name == "apply_patch"
            assert item.input == "*** Begin Patch\n*** End Patch"
    sent = fake.last.body
    names = ([t["function"]["name"] for t in sent["tools"]] if kind == "openai" else [t["name"] for t in sent["tools"]])
    assert names == ["read_file", "agents__spawn", "apply_patch"]


def test_tool_results_and_custom_outputs_reach_the_upstream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    client.responses.create(model="step-3.5-flash", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                            input=[{"role": "user", "content": "go"},
                                   {"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "agents",
                                    "arguments": "{}"},
                                   {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch",
                                    "input": "PATCH"},
                                   {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
                                   {"type": "custom_tool_call_output", "call_id": "c2", "output": "applied"}])
    sent = fake.last.body
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    calls = sent["messages"][1]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("c1", "agents__spawn", "{}"), ("c2", "apply_patch", '{"input":"PATCH"}')]
    assert sent["messages"][2:] == [{"role": "tool", "tool_call_id": "c1", "content": "spawned"},
                                    {"role": "tool", "tool_call_id": "c2", "content": "applied"}]


# ------------------------------------------------------------------ images, JSON schema, options
@pytest.mark.parametrize("model, word, sent", [("step-3.5-flash-2603", "medium", "high"),
                                               ("step-3.7-flash", "minimal", "low"),
                                               ("step-3.7-flash", "none", "low"),
                                               ("step-3.5-flash", "high", None)])
def test_effort_maps_to_the_model_levels_as_on_the_other_protocols(client: openai.OpenAI, fake: FakeUpstream,
                                                                   model: str, word: str, sent: str | None) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="x", reasoning={"effort": word})  # type: ignore[typeddict-item]
    assert raw.parse().status == "completed"
    assert fake.last.body.get("reasoning_effort") == sent
    assert raw.headers.get("x-stepplan-effort") == sent


def test_image_input(up: tuple[str, openai.OpenAI], fake: FakeUpstream) -> None:
    kind, client = up
    client.responses.create(model="step-3.7-flash", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what colour?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{RED_PNG}", "detail": "low"}]}])
    content = fake.last.body["messages"][0]["content"]
    if kind == "openai":
        assert content[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PNG}",
                                                                  "detail": "low"}}
    else:
        assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                          "data": RED_PNG}}


def test_image_to_a_text_only_model_is_unsupported_content(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="step-3.5-flash", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": f"data:image/png;base64,{RED_PNG}"}]}])
    assert exc.value.body["code"] == "unsupported_content_type"  # type: ignore[index]


def test_json_schema_output(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion('{"colour": "red"}'))
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"],
              "additionalProperties": False}
    r = client.responses.create(model="step-3.5-flash", input="colour?",
                                text={"format": {"type": "json_schema", "name": "c", "schema": schema, "strict": True}})
    assert r.output_text == '{"colour": "red"}'
    assert r.text is not None and r.text.format.type == "json_schema"
    assert fake.last.body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "c", "schema": schema, "strict": True}}


def test_sampling_options_and_cache_key(client: openai.OpenAI, fake: FakeUpstream) -> None:
    r = client.responses.create(model="step-3.5-flash", input="hi", max_output_tokens=300, temperature=0.2, top_p=0.5,
                                metadata={"k": "v"}, prompt_cache_key="conv-1", safety_identifier="user-1",
                                extra_body={"some_future_field": 1, "client_metadata": {"x": "y"}})
    sent = fake.last.body
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (300, 0.2, 0.5)
    assert "some_future_field" not in sent and "client_metadata" not in sent and "metadata" not in sent
    assert r.metadata == {"k": "v"} and r.max_output_tokens == 300 and r.prompt_cache_key == "conv-1"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI, fake: FakeUpstream, stream: bool) -> None:
    if stream:
        fake.queue_sse([openai_chunk({"role": "assistant", "content": "cut"}), openai_chunk({}, "length"), "[DONE]"])
        with client.responses.stream(model="step-3.5-flash", input="hi", max_output_tokens=16) as s:
            events = list(s)
        assert events[-1].type == "response.incomplete"
        r = events[-1].response
    else:
        fake.queue_json(openai_completion("cut", finish="length"))
        r = client.responses.create(model="step-3.5-flash", input="hi", max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


# ------------------------------------------------------------------ errors
def test_errors_before_the_first_byte_use_the_openai_envelope(gateway: Gateway, key: str) -> None:
    url = f"{gateway.openai_base}/responses"
    auth = {"authorization": f"Bearer {key}"}
    r = httpx.post(url, headers=auth, json={"model": "step-3.5-flash", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA"}]}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unsupported_content_type" and err["param"] == "input[0].content[0].type"
    assert "input_file" in err["message"] and err["trace_id"] == r.headers["x-trace-id"]
    r = httpx.post(url, headers=auth, json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, headers={"authorization": "Bearer sk-step-wrong"}, json={"model": "step-3.5-flash",
                                                                                  "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(url, headers=auth, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_params_invalid"
    r = httpx.post(url, headers=auth, json={"model": "step-3.5-flash", "input": "x",
                                            "reasoning": {"effort": "extreme"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning.effort"


def test_upstream_failure_mid_stream_ends_with_error_then_response_failed(gateway: Gateway, key: str,
                                                                           fake: FakeUpstream) -> None:
    fake.queue_sse([openai_chunk({"role": "assistant", "content": "part"})], cut=True)
    r = httpx.post(f"{gateway.openai_base}/responses", headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.5-flash", "input": "x", "stream": True}, timeout=30)
    events = parse_sse(r.text)
    check_events(events)
    assert [e for e, _ in events][-2:] == ["error", "response.failed"]
    assert events[-2][1]["code"] == "upstream_error"


# ------------------------------------------------------------------ Step Plan rules
def test_codex_web_search_tool_is_dropped_and_reported(client: openai.OpenAI, fake: FakeUpstream) -> None:
    for model in ("step-3.7-flash", "step-router-v1"):
        raw = client.responses.with_raw_response.create(
            model=model, input="hi", tools=[*TOOLS[:1], {"type": "web_search", "external_web_access": False}])
        assert raw.parse().status == "completed"
        assert raw.headers["x-stepplan-dropped-tools"] == "web_search"
        assert [t["function"]["name"] for t in fake.last.body["tools"]] == ["read_file"]


def test_web_search_with_live_access_runs_where_the_model_can(client: openai.OpenAI, aclient: openai.OpenAI,
                                                              fake: FakeUpstream) -> None:
    raw = client.responses.with_raw_response.create(model="step-3.7-flash", input="news?",
                                                    tools=[{"type": "web_search"}])
    assert "x-stepplan-dropped-tools" not in raw.headers
    assert fake.last.body["tools"] == [{"type": "web_search", "function": {"description": ""}}]
    for c, model in ((client, "step-router-v1"), (aclient, "step-3.7-flash")):
        raw = c.responses.with_raw_response.create(model=model, input="news?", tools=[{"type": "web_search"}])
        assert raw.headers["x-stepplan-dropped-tools"] == "web_search"
        assert "tools" not in fake.last.body


def test_router_field_rules_apply(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="step-router-v1", input="x", max_output_tokens=10_000_000)
    assert exc.value.body["param"] == "max_output_tokens"  # type: ignore[index]

"""Responses codec, function by function: request decoding, response encoding and the sealer.
(The stream encoder has its own file.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stepplan.errors import InvalidRequest, UnsupportedContent
from stepplan.protocols.canonical import (
    Image,
    Message,
    Response,
    Text,
    Thinking,
    ToolCall,
    ToolChoice,
    ToolResult,
    Usage,
)
from stepplan.protocols.responses_request import custom_parameters, decode_request, flat_name
from stepplan.protocols.responses_response import Answer, custom_input, encode_response, usage_to_responses
from stepplan.reasoning_seal import Sealer

SEALER = Sealer(b"test-secret")
PNG = "iVBORw0KGgo="


def decode(body: dict[str, Any], history: list[dict[str, Any]] | None = None):
    return decode_request({"model": "step-3.7-flash", **body}, SEALER.open, history or [])


def error_of(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        decode(body)
    return exc.value


# ============================================================================ request: input
def test_string_input_is_one_user_message() -> None:
    req, shape = decode({"input": "hello", "instructions": "be brief"})
    assert req.system == [Text("be brief")]
    assert req.messages == [Message("user", [Text("hello")])]
    assert shape.input_items[0]["type"] == "message" and shape.input_items[0]["content"] == [
        {"type": "input_text", "text": "hello"}]
    assert shape.input_items[0]["id"].startswith("msg_")


def test_items_become_canonical_turns_in_order() -> None:
    sealed = SEALER.seal("let me look", "upstream-sig")
    req, _ = decode({"input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "more rules"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "low"},
            {"type": "input_image", "image_url": "https://example.com/a.png"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
        {"type": "function_call", "call_id": "call_1", "name": "read", "arguments": '{"p":1}'},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "function_call_output", "call_id": "call_1", "output": "file text"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "ok"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        {"role": "developer", "content": "late reminder"},
        {"role": "user", "content": "thanks"},
    ]})
    assert req.system == [Text("rules"), Text("more rules")]
    assert req.messages == [
        Message("user", [Text("look"), Image(data=PNG, media_type="image/png", detail="low"),
                         Image(url="https://example.com/a.png")]),
        Message("assistant", [Thinking("let me look", signature="upstream-sig"),
                              ToolCall("call_1", "read", '{"p":1}'),
                              ToolCall("call_2", "apply_patch", '{"input":"*** Begin Patch"}')]),
        Message("user", [ToolResult("call_1", [Text("file text")]), ToolResult("call_2", [Text("ok")])]),
        Message("assistant", [Text("done")]),
        Message("system", [Text("late reminder")]),
        Message("user", [Text("thanks")]),
    ]


@pytest.mark.parametrize("encrypted", [None, "", "gAAAAABopenai-made", SEALER.seal("x")[:-6] + "AAAAAA",
                                       Sealer(b"another-gateway").seal("not ours")],
                         ids=["absent", "empty", "openai-made", "tampered", "another-gateway"])  # seals are random
def test_reasoning_items_the_gateway_cannot_open_are_dropped(encrypted: str | None) -> None:
    item: dict[str, Any] = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}]}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    req, _ = decode({"input": [{"role": "user", "content": "q"}, item,
                               {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]})
    assert req.messages[1] == Message("assistant", [ToolCall("c", "f", "{}")])


def test_history_items_come_before_this_input() -> None:
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "one"}]}]
    req, _ = decode({"input": "second", "instructions": "sys"}, history)
    assert req.system == [Text("sys")]
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[2].content == [Text("second")]


def test_hosted_tool_items_in_history_are_dropped() -> None:
    req, _ = decode({"input": [{"role": "user", "content": "q"},
                               {"type": "web_search_call", "id": "ws_1", "status": "completed",
                                "action": {"type": "search", "query": "x"}},
                               {"role": "user", "content": "again"}]})
    assert [m.content for m in req.messages] == [[Text("q")], [Text("again")]]


@pytest.mark.parametrize("body, param, code", [
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}]},
     "input[0].content[0].type", "unsupported_content_type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id", "unsupported_content_type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
     "input[0].content[0].image_url", "request_params_invalid"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
     "input[0].content[0].text", "request_params_invalid"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "request_params_invalid"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", "request_params_invalid"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_content_type"),
    ({"input": [{"type": "local_shell_call"}]}, "input[0].type", "request_params_invalid"),
    ({"input": 5}, "input", "request_params_invalid"),
    ({}, "input", "request_params_invalid"),
    ({"input": []}, "input", "request_params_invalid"),
    ({"input": "x", "background": True}, "background", "request_params_invalid"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "request_params_invalid"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "request_params_invalid"),
    ({"input": "x", "temperature": 3}, "temperature", "request_params_invalid"),
    ({"input": "x", "truncation": "sometimes"}, "truncation", "request_params_invalid"),
    ({"input": "x", "metadata": {"a": 1}}, "metadata.a", "request_params_invalid"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "request_params_invalid"),
    ({"input": "x", "reasoning": {"summary": "long"}}, "reasoning.summary", "request_params_invalid"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", "request_params_invalid"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema",
     "request_params_invalid"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type", "unsupported_content_type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "request_params_invalid"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}]},
     "tools[1].name", "request_params_invalid"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice.name", "request_params_invalid"),
])
def test_bad_input_names_the_field(body: dict[str, Any], param: str, code: str) -> None:
    err = error_of(body)
    assert err.param == param, err.message
    assert err.code == code
    if code == "unsupported_content_type":
        assert isinstance(err, UnsupportedContent)


def test_unknown_fields_are_accepted_and_options_are_read() -> None:
    req, shape = decode({"input": "x", "some_future_field": {"a": 1}, "client_metadata": {"k": "v"},
                         "max_output_tokens": 100, "temperature": 0.5, "top_p": 0.9, "parallel_tool_calls": False,
                         "prompt_cache_key": "thread-1", "safety_identifier": "u-1", "store": False,
                         "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"},
                         "reasoning": {"effort": "minimal", "summary": "auto"}, "truncation": "auto"})
    assert (req.max_tokens, req.temperature, req.top_p, req.parallel_tool_calls) == (100, 0.5, 0.9, False)
    assert req.session_id == "thread-1" and req.user == "u-1" and req.effort == "minimal"
    assert shape.store is False and shape.include_encrypted and shape.summary and shape.input_items == []
    assert shape.echo["metadata"] == {"k": "v"} and shape.echo["truncation"] == "auto"
    assert shape.echo["reasoning"] == {"effort": "minimal", "summary": "auto"}


@pytest.mark.parametrize("word, want", [(None, None), ("none", "none"), ("minimal", "minimal"), ("Medium", "medium"),
                                        ("xhigh", "xhigh"), ("max", "max")])
def test_effort_words_are_kept_for_the_pipeline_to_map(word: str | None, want: str | None) -> None:
    req, _ = decode({"input": "x", "reasoning": {"effort": word}})
    assert req.effort == want and req.thinking is None


@pytest.mark.parametrize("fmt, want", [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "name": "pt", "schema": {"type": "object"}, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "pt", "schema": {"type": "object"}, "strict": True}}),
])
def test_text_format_becomes_response_format(fmt: dict[str, Any], want: dict[str, Any] | None) -> None:
    req, shape = decode({"input": "x", "text": {"format": fmt}})
    assert req.response_format == want
    assert shape.echo["text"] == {"format": fmt}


# ============================================================================ request: tools
def test_tools_function_namespace_custom_and_web_search() -> None:
    req, shape = decode({"input": "x", "tools": [
        {"type": "function", "name": "read", "description": "Read", "strict": True,
         "parameters": {"type": "object", "properties": {"p": {"type": "string"}}}},
        {"type": "namespace", "name": "agents", "description": "Sub-agents", "tools": [
            {"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}},
            {"type": "custom", "name": "script"}]},
        {"type": "custom", "name": "apply_patch", "description": "Patch files",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "web_search", "external_web_access": False},
    ]})
    assert [t.name for t in req.tools] == ["read", "agents__spawn", "agents__script", "apply_patch"]
    assert all(t.kind == "function" for t in req.tools)
    assert req.tools[0].parameters["properties"] == {"p": {"type": "string"}}
    patch = req.tools[3]
    assert patch.parameters == custom_parameters(None, "x")[0]
    assert patch.description is not None and patch.description.startswith("Patch files")
    assert "lark grammar:\nstart: /.+/" in patch.description
    assert shape.client_tool("agents__spawn").namespace == "agents"
    assert shape.client_tool("agents__script").custom and shape.client_tool("apply_patch").custom
    assert shape.client_tool("read").namespace is None and not shape.client_tool("read").custom
    assert shape.web_search == [{"type": "web_search", "external_web_access": False}]


def test_namespaced_calls_in_history_use_the_flat_name() -> None:
    req, _ = decode({"input": [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "agents", "arguments": "{}"}]})
    assert req.messages[1].content == [ToolCall("c1", "agents__spawn", "{}")]


@pytest.mark.parametrize("ns, name", [("agents", "spawn"), ("a" * 40, "b" * 40), ("my.ns", "tool name")])
def test_flat_names_are_valid_function_names(ns: str, name: str) -> None:
    flat = flat_name(ns, name)
    assert 1 <= len(flat) <= 64 and all(ch.isalnum() or ch in "_-" for ch in flat)
    assert flat == flat_name(ns, name)  # the same name on every turn
    assert flat != flat_name(ns, name + "x")


def test_tool_choice_forms() -> None:
    tools = [{"type": "function", "name": "a"}, {"type": "function", "name": "b"},
             {"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "function", "name": "c"}]}]
    assert decode({"input": "x", "tools": tools, "tool_choice": "required"})[0].tool_choice == ToolChoice("required")
    req, _ = decode({"input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "c", "namespace": "ns"}})
    assert req.tool_choice == ToolChoice("tool", "ns__c")
    req, _ = decode({"input": "x", "tools": tools, "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}})
    assert req.tool_choice == ToolChoice("required") and [t.name for t in req.tools] == ["b"]


# ============================================================================ response
def answer(**shape: Any) -> Answer:
    _, s = decode({"input": "x", "tools": [
        {"type": "function", "name": "read"},
        {"type": "namespace", "name": "agents", "description": "", "tools": [{"type": "function", "name": "spawn"}]},
        {"type": "custom", "name": "apply_patch"}]})
    for k, v in shape.items():
        setattr(s, k, v)
    return Answer("resp_abc", "step-3.7-flash", s, SEALER, created_at=1)


def test_usage_counts_cached_input_and_reasoning_output() -> None:
    u = Usage(input=100, cache_read=900, cache_write=5, output=50, reasoning=20, known=True)
    assert usage_to_responses(u) == {
        "input_tokens": 1005, "input_tokens_details": {"cached_tokens": 900, "cache_write_tokens": 5},
        "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 20}, "total_tokens": 1055}


def test_encode_response_items_in_model_order() -> None:
    resp = Response("up", "m", [Thinking("why", signature="sig"), Text("Hello "), Text("there"),
                                ToolCall("call_1", "read", '{"p":1}'), ToolCall("call_2", "agents__spawn", ""),
                                ToolCall("call_3", "apply_patch", '{"input":"*** Begin Patch"}')],
                    "tool_use", Usage(input=10, output=5, known=True))
    client, stored = encode_response(resp, answer(summary=True))
    assert client["id"] == "resp_abc" and client["object"] == "response" and client["status"] == "completed"
    assert client["model"] == "step-3.7-flash" and client["incomplete_details"] is None and client["error"] is None
    assert [i["type"] for i in client["output"]] == ["reasoning", "message", "function_call", "function_call",
                                                     "custom_tool_call"]
    rs, msg, fc, spawn, custom = client["output"]
    assert rs["summary"] == [{"type": "summary_text", "text": "why"}] and "encrypted_content" not in rs
    assert msg["content"] == [{"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}]
    assert msg["role"] == "assistant" and msg["status"] == "completed"
    assert (fc["call_id"], fc["name"], fc["arguments"]) == ("call_1", "read", '{"p":1}') and "namespace" not in fc
    assert (spawn["name"], spawn["namespace"], spawn["arguments"]) == ("spawn", "agents", "{}")
    assert (custom["call_id"], custom["name"], custom["input"]) == ("call_3", "apply_patch", "*** Begin Patch")
    assert len({i["id"] for i in client["output"]}) == 5
    # the stored copy keeps the sealed reasoning, which opens to the upstream's text and signature
    assert stored is not None
    sealed = stored["output"][0]["encrypted_content"]
    assert SEALER.open(sealed) == Thinking("why", signature="sig")
    assert stored["output"][1:] == client["output"][1:]


def test_encrypted_content_is_sent_when_included_and_summary_only_when_asked() -> None:
    resp = Response("up", "m", [Thinking("why"), Text("a")], "end_turn", Usage())
    client, _ = encode_response(resp, answer(include_encrypted=True, summary=False))
    rs = client["output"][0]
    assert rs["summary"] == [] and SEALER.open(rs["encrypted_content"]) == Thinking("why")


def test_nothing_to_store_when_the_client_did_not_ask() -> None:
    client, stored = encode_response(Response("up", "m", [Thinking("t"), Text("a")], "end_turn", Usage()),
                                     answer(store=False))
    assert stored is None and "encrypted_content" not in client["output"][0]


def test_max_tokens_makes_the_response_incomplete() -> None:
    client, _ = encode_response(Response("up", "m", [Text("cut")], "max_tokens", Usage()), answer())
    assert client["status"] == "incomplete"
    assert client["incomplete_details"] == {"reason": "max_output_tokens"}
    assert client["output"][0]["status"] == "incomplete"


def test_duplicate_or_missing_upstream_call_ids_become_unique() -> None:
    resp = Response("up", "m", [ToolCall("x", "read", "{}"), ToolCall("x", "read", "{}"), ToolCall("", "read", "{}")],
                    "tool_use", Usage())
    client, _ = encode_response(resp, answer())
    ids = [i["call_id"] for i in client["output"]]
    assert ids[0] == "x" and len(set(ids)) == 3 and all(ids)


@pytest.mark.parametrize("args, raw", [('{"input":"a\\nb"}', "a\nb"), ('{"patch":"p"}', "p"), ("{}", ""),
                                       ("not json", "not json"), ('{"a":1,"b":2}', '{"a":1,"b":2}')])
def test_custom_input_from_function_arguments(args: str, raw: str) -> None:
    assert custom_input(args) == raw


# ============================================================================ sealer
def test_sealed_reasoning_round_trips_and_resists_tampering() -> None:
    token = SEALER.seal("思考 " * 500, "sig-é")
    assert SEALER.open(token) == Thinking("思考 " * 500, signature="sig-é")
    assert len(token) < len(("思考 " * 500).encode())  # compressed
    assert SEALER.open(SEALER.seal("blob", redacted=True)) == Thinking("blob", redacted=True)
    body = token[5:]
    flipped = body[:40] + ("A" if body[40] != "A" else "B") + body[41:]
    assert SEALER.open("spr1." + flipped) is None
    assert SEALER.open("spr1.!!!") is None and SEALER.open("spr1.") is None and SEALER.open("other") is None
    assert Sealer(b"other-secret").open(token) is None
    assert SEALER.seal("same") != SEALER.seal("same")  # fresh nonce each time


def test_rotation_opens_items_sealed_under_a_previous_secret() -> None:
    old = Sealer(b"old-secret").seal("before rotation")
    assert Sealer(b"new-secret", [b"old-secret"]).open(old) == Thinking("before rotation")
    assert Sealer(b"new-secret").open(old) is None


def test_decoder_never_mutates_its_input() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": "q"}], "tools": [
        {"type": "namespace", "name": "n", "description": "", "tools": [{"type": "function", "name": "f"}]}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f",
                                                                             "namespace": "n"}]}}
    before = orjson.dumps(body)
    decode_request(body, SEALER.open)
    assert orjson.dumps(body) == before

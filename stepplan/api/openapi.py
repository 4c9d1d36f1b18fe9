"""The gateway's own OpenAPI 3.1 document, served at ``GET /step_plan/v1/openapi.json`` (no key).

Request bodies are written from the request codecs' rules (``stepplan/protocols/*_request.py``):
the fields each decoder reads, their types, enums and bounds, and the limits of
:mod:`stepplan.protocols.limits` as configured. Unknown fields are allowed, as the decoders
accept and drop them. ``tests/fuzz/test_openapi_document.py`` reads the decoders' source and
fails when a field they read is missing here, so the two cannot drift apart; the same document
drives the schemathesis fuzzing in CI (docs/security.md).

The document is built once when the app starts (:func:`document_bytes`) and served as bytes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..protocols import effort, limits
from ..protocols._check import INT64

JSON = "application/json"
SSE = "text/event-stream"
Schema = dict[str, Any]

INT64_MAX = INT64 - 1
UPSTREAM_STATUSES = (502, 503, 504)  # the only 5xx a client may see: the upstream failed or the gateway is full


# ============================================================================ small builders
def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], required: tuple[str, ...] = (), *, extra: bool = True) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    return out


def _const(v: str) -> Schema:
    return {"type": "string", "const": v}


def _enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def _int(lo: int | None = None, hi: int = INT64_MAX) -> Schema:
    out: Schema = {"type": "integer", "minimum": -INT64 if lo is None else lo, "maximum": hi}
    return out


def _num(lo: float, hi: float) -> Schema:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _nullable(s: Schema) -> Schema:
    return {"anyOf": [s, {"type": "null"}]}


class _Builder:
    """The schemas, with the configured input limits."""

    def __init__(self, lim: limits.InputLimits):
        self.lim = lim

    def s(self, **kw: Any) -> Schema:
        """A string the codecs read (bounded by ``max_string_chars``)."""
        return {"type": "string", "maxLength": self.lim.max_string_chars, **kw}

    def arr(self, items: Schema, limit: str, *, min_items: int = 0) -> Schema:
        out: Schema = {"type": "array", "items": items, "maxItems": getattr(self.lim, limit)}
        if min_items:
            out["minItems"] = min_items
        return out

    def str_or_list(self, limit: str = "max_content_parts") -> Schema:
        return {"anyOf": [self.s(), self.arr(self.s(), limit)]}

    def effort(self) -> Schema:
        return _nullable(_enum(*effort.WORDS))

    def cache_control(self) -> Schema:
        return _obj({"type": _const("ephemeral"), "ttl": _enum("5m", "1h")})

    # ------------------------------------------------------------------ OpenAI chat completions
    def chat_parts(self) -> dict[str, Schema]:
        cc = self.cache_control()
        return {
            "ChatTextPart": _obj({"type": _const("text"), "text": self.s(), "cache_control": cc}, ("type", "text")),
            "ChatImagePart": _obj({"type": _const("image_url"), "cache_control": cc, "image_url": {"anyOf": [
                self.s(description="an http(s) URL or a data: URL"),
                _obj({"url": self.s(description="an http(s) URL or a data: URL"), "detail": self.s()}, ("url",)),
            ]}}, ("type", "image_url")),
            "ChatVideoPart": _obj({"type": _const("video_url"), "video_url": {"anyOf": [
                self.s(description="an http(s) URL or a data:video/ URL"),
                _obj({"url": self.s(description="an http(s) URL or a data:video/ URL")}, ("url",)),
            ]}}, ("type", "video_url")),
            "ChatAudioPart": _obj({"type": _const("input_audio"), "input_audio": _obj(
                {"data": self.s(), "format": self.s()}, ("data",))}, ("type", "input_audio")),
            "ChatFilePart": _obj({"type": _const("file"), "file": _obj(
                {"file_data": self.s(description="a data: URL"), "filename": self.s()})}, ("type", "file")),
            "ChatRefusalPart": _obj({"type": _const("refusal"), "refusal": self.s()}, ("type", "refusal")),
        }

    def chat(self) -> dict[str, Schema]:
        parts = self.chat_parts()
        part = {"oneOf": [_ref(n) for n in parts], "discriminator": {"propertyName": "type"}}
        content = _nullable({"anyOf": [self.s(), self.arr(part, "max_content_parts")]})
        tool_call = _obj({"id": self.s(), "type": _const("function"), "function": _obj(
            {"name": self.s(), "arguments": {"anyOf": [self.s(description="JSON text"), {"type": "object"}]}},
            ("name",))}, ("id", "function"))
        message = _obj({
            "role": _enum("system", "developer", "user", "assistant", "tool", "function"),
            "content": content,
            "name": self.s(),
            "tool_call_id": self.s(description="required for role tool"),
            "tool_calls": _nullable(self.arr(tool_call, "max_tools")),
            "reasoning_content": _nullable({"type": "string"}),
            "reasoning": _nullable({"type": "string"}),
            "cache_control": self.cache_control(),
        }, ("role",))
        tool = _obj({"type": {"type": "string", "default": "function",
                              "description": "function; any other word is a server tool (e.g. web_search)"},
                     "function": _obj({"name": self.s(), "description": self.s(), "parameters": {"type": "object"},
                                       "strict": {"type": "boolean"}}, ("name",))})
        tool_choice = {"anyOf": [_enum("auto", "none", "required"), _obj(
            {"type": _const("function"), "function": _obj({"name": self.s()}, ("name",))}, ("type", "function"))]}
        response_format = _obj({"type": _enum("text", "json_object", "json_schema"), "json_schema": _obj(
            {"name": self.s(), "schema": {"type": "object"}, "strict": {"type": "boolean"},
             "description": self.s()}, ("name",))}, ("type",))
        request = _obj({
            "model": self.s(minLength=1),
            "messages": self.arr(_ref("ChatMessage"), "max_messages", min_items=1),
            "stream": _nullable({"type": "boolean"}),
            "stream_options": _nullable(_obj({"include_usage": {"type": "boolean"}})),
            "max_completion_tokens": _nullable(_int(1)),
            "max_tokens": _nullable(_int(1)),
            "temperature": _nullable(_num(0, 2)),
            "top_p": _nullable(_num(0, 1)),
            "top_k": _nullable(_int(0)),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": 1, "description": "only 1 is served"}),
            "stop": _nullable(self.str_or_list()),
            "presence_penalty": _nullable(_num(-2, 2)),
            "frequency_penalty": _nullable(_num(-2, 2)),
            "seed": _nullable(_int()),
            "response_format": _nullable(response_format),
            "tools": _nullable(self.arr(tool, "max_tools")),
            "tool_choice": _nullable(tool_choice),
            "parallel_tool_calls": _nullable({"type": "boolean"}),
            "reasoning_effort": self.effort(),
            "thinking": _nullable(_obj({"type": _enum("enabled", "disabled", "adaptive"),
                                        "budget_tokens": _nullable(_int(1))},
                                       )),
            "reasoning_format": _nullable(_enum("general", "deepseek-style")),
            "user": _nullable(self.s()),
        }, ("model", "messages"))
        request["description"] = "Unknown fields are accepted and not forwarded."
        usage = _obj({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                      "total_tokens": {"type": "integer"},
                      "prompt_tokens_details": _obj({"cached_tokens": {"type": "integer"}}),
                      "completion_tokens_details": _obj({"reasoning_tokens": {"type": "integer"}})})
        response = _obj({
            "id": {"type": "string"}, "object": _const("chat.completion"), "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _obj({
                "index": {"type": "integer"},
                "message": _obj({"role": _const("assistant"), "content": _nullable({"type": "string"}),
                                 "reasoning_content": _nullable({"type": "string"}),
                                 "tool_calls": {"type": "array", "items": {"type": "object"}}}),
                "finish_reason": _nullable({"type": "string"})})},
            "usage": usage,
        }, ("id", "object", "choices"))
        return {**parts, "ChatMessage": message, "ChatCompletionRequest": request,
                "ChatCompletion": response, "ChatUsage": usage}

    # ------------------------------------------------------------------ Anthropic Messages
    def messages(self) -> dict[str, Schema]:
        cc = self.cache_control()
        image_source = {"oneOf": [
            _obj({"type": _const("base64"), "media_type": self.s(), "data": self.s()}, ("type", "media_type", "data")),
            _obj({"type": _const("url"), "url": self.s(description="an http(s) URL")}, ("type", "url")),
        ]}
        doc_source = {"oneOf": [
            _obj({"type": _const("base64"), "media_type": self.s(), "data": self.s()}, ("type", "data")),
            _obj({"type": _const("url"), "url": self.s()}, ("type", "url")),
            _obj({"type": _const("text"), "data": self.s(), "media_type": self.s()}, ("type", "data")),
            _obj({"type": _const("content"), "content": {"anyOf": [self.s(), self.arr(
                _obj({"type": _const("text"), "text": self.s()}, ("text",)), "max_content_parts")]}},
                 ("type", "content")),
        ]}
        blocks: dict[str, Schema] = {
            "AnthropicTextBlock": _obj({"type": _const("text"), "text": self.s(), "cache_control": cc},
                                       ("type", "text")),
            "AnthropicImageBlock": _obj({"type": _const("image"), "source": image_source, "cache_control": cc},
                                        ("type", "source")),
            "AnthropicDocumentBlock": _obj({"type": _const("document"), "source": doc_source, "title": self.s(),
                                            "cache_control": cc}, ("type", "source")),
            "AnthropicSearchResultBlock": _obj({"type": _const("search_result"), "title": self.s(),
                                                "source": self.s(), "content": self.arr(_obj(
                                                    {"type": _const("text"), "text": self.s()}), "max_content_parts"),
                                                "cache_control": cc}, ("type",)),
            "AnthropicToolUseBlock": _obj({"type": _const("tool_use"), "id": self.s(), "name": self.s(),
                                           "input": {"type": "object"}, "cache_control": cc},
                                          ("type", "id", "name")),
            "AnthropicThinkingBlock": _obj({"type": _const("thinking"), "thinking": self.s(),
                                            "signature": self.s()}, ("type",)),
            "AnthropicRedactedThinkingBlock": _obj({"type": _const("redacted_thinking"), "data": self.s()},
                                                   ("type", "data")),
        }
        inner = {"anyOf": [_ref(n) for n in ("AnthropicTextBlock", "AnthropicImageBlock", "AnthropicDocumentBlock",
                                             "AnthropicSearchResultBlock")]}
        blocks["AnthropicToolResultBlock"] = _obj({
            "type": _const("tool_result"), "tool_use_id": self.s(), "is_error": _nullable({"type": "boolean"}),
            "content": _nullable({"anyOf": [self.s(), self.arr(inner, "max_content_parts")]}), "cache_control": cc,
        }, ("type", "tool_use_id"))
        block = {"oneOf": [_ref(n) for n in blocks], "discriminator": {"propertyName": "type"}}
        message = _obj({"role": _enum("user", "assistant", "system"),
                        "content": {"anyOf": [self.s(), self.arr(block, "max_content_parts")]}}, ("role", "content"))
        system = {"anyOf": [self.s(), self.arr(_ref("AnthropicTextBlock"), "max_content_parts")]}
        tool = {"anyOf": [
            _obj({"type": _enum("custom"), "name": self.s(), "description": self.s(),
                  "input_schema": {"type": "object"}, "cache_control": cc}, ("name",)),
            _obj({"type": {"type": "string", "pattern": "^web_search", "description": "a web_search server tool"},
                  "name": self.s()}, ("type",)),
        ]}
        tool_choice = _obj({"type": _enum("auto", "any", "tool", "none"), "name": self.s(),
                            "disable_parallel_tool_use": _nullable({"type": "boolean"})}, ("type",))
        thinking = _obj({"type": _enum("enabled", "adaptive", "disabled"), "budget_tokens": _nullable(_int(1))},
                        ("type",))
        output_config = _obj({"effort": self.effort(), "format": _nullable(_obj(
            {"type": _const("json_schema"), "schema": {"type": "object"}}, ("type", "schema")))})
        props: dict[str, Schema] = {
            "model": self.s(minLength=1),
            "max_tokens": _int(1),
            "messages": self.arr(_ref("AnthropicMessage"), "max_messages", min_items=1),
            "system": _nullable(system),
            "stream": _nullable({"type": "boolean"}),
            "temperature": _nullable(_num(0, 2)),
            "top_p": _nullable(_num(0, 1)),
            "top_k": _nullable(_int(0)),
            "stop_sequences": _nullable(self.arr(self.s(), "max_content_parts")),
            "tools": _nullable(self.arr(tool, "max_tools")),
            "tool_choice": _nullable(tool_choice),
            "thinking": _nullable(thinking),
            "output_config": _nullable(output_config),
            "metadata": _nullable(_obj({"user_id": _nullable(self.s())})),
        }
        request = _obj(props, ("model", "max_tokens", "messages"))
        request["description"] = "Beta fields (context_management, container, mcp_servers, …) and unknown fields " \
                                 "are accepted and not forwarded."
        count = _obj({k: v for k, v in props.items() if k != "max_tokens"}, ("model", "messages"))
        usage = _obj({k: {"type": "integer"} for k in ("input_tokens", "cache_creation_input_tokens",
                                                        "cache_read_input_tokens", "output_tokens")})
        response = _obj({"id": {"type": "string"}, "type": _const("message"), "role": _const("assistant"),
                         "model": {"type": "string"}, "content": {"type": "array", "items": {"type": "object"}},
                         "stop_reason": _nullable({"type": "string"}),
                         "stop_sequence": _nullable({"type": "string"}), "usage": usage},
                        ("id", "type", "role", "content"))
        return {**blocks, "AnthropicMessage": message, "MessagesRequest": request, "CountTokensRequest": count,
                "Message": response, "CountTokensResponse": _obj({"input_tokens": {"type": "integer"}},
                                                                ("input_tokens",))}

    # ------------------------------------------------------------------ OpenAI Responses
    def responses(self) -> dict[str, Schema]:
        text_part = _obj({"type": _enum("input_text", "output_text", "text"), "text": self.s()}, ("type", "text"))
        parts: Schema = {"anyOf": [
            text_part,
            _obj({"type": _const("refusal"), "refusal": self.s()}, ("type", "refusal")),
            _obj({"type": _const("input_image"), "image_url": self.s(description="an http(s) URL or a data: URL"),
                  "detail": self.s(), "file_id": {"type": "null", "description": "the Files API is not served"}},
                 ("type", "image_url")),
        ]}
        content = _nullable({"anyOf": [self.s(), self.arr(parts, "max_content_parts")]})
        item: Schema = {"anyOf": [
            _obj({"type": _const("message"), "role": _enum("system", "developer", "user", "assistant"),
                  "content": content}, ("role",)),
            _obj({"type": _const("function_call"), "call_id": self.s(), "name": self.s(), "namespace": self.s(),
                  "arguments": self.s()}, ("type", "call_id", "name")),
            _obj({"type": _const("custom_tool_call"), "call_id": self.s(), "name": self.s(), "namespace": self.s(),
                  "input": self.s()}, ("type", "call_id", "name", "input")),
            _obj({"type": _enum("function_call_output", "custom_tool_call_output"), "call_id": self.s(),
                  "output": content}, ("type", "call_id")),
            _obj({"type": _const("reasoning"), "encrypted_content": _nullable(self.s()),
                  "summary": {"type": "array"}}, ("type",)),
        ]}
        fn_tool = _obj({"type": _enum("function", "custom"), "name": self.s(minLength=1), "description": self.s(),
                        "parameters": _nullable({"type": "object"}), "strict": _nullable({"type": "boolean"}),
                        "format": _nullable(_obj({"type": _enum("text", "grammar"), "syntax": self.s(),
                                                  "definition": self.s()}, ("type",)))}, ("type", "name"))
        tool: Schema = {"anyOf": [
            fn_tool,
            _obj({"type": _const("namespace"), "name": self.s(), "tools": self.arr(fn_tool, "max_tools")},
                 ("type", "name", "tools")),
            _obj({"type": _enum("web_search", "web_search_preview", "web_search_2025_08_26",
                                "web_search_preview_2025_03_11"), "external_web_access": {"type": "boolean"}},
                 ("type",)),
        ]}
        named = _obj({"type": _enum("function", "custom"), "name": self.s(), "namespace": self.s()},
                     ("type", "name"))
        tool_choice: Schema = {"anyOf": [
            _enum("auto", "none", "required"), named,
            _obj({"type": _const("allowed_tools"), "mode": _enum("auto", "required"),
                  "tools": self.arr({"type": "object"}, "max_tools")}, ("type", "tools")),
        ]}
        text_format = _obj({"type": _enum("text", "json_object", "json_schema"), "name": self.s(),
                            "schema": {"type": "object"}, "strict": _nullable({"type": "boolean"}),
                            "description": self.s()}, ("type",))
        request = _obj({
            "model": self.s(minLength=1),
            "input": {"anyOf": [self.s(), self.arr(item, "max_messages", min_items=1)]},
            "instructions": _nullable(self.s()),
            "previous_response_id": _nullable(self.s()),
            "stream": _nullable({"type": "boolean"}),
            "store": _nullable({"type": "boolean"}),
            "tools": _nullable(self.arr(tool, "max_tools")),
            "tool_choice": _nullable(tool_choice),
            "parallel_tool_calls": _nullable({"type": "boolean"}),
            "text": _nullable(_obj({"format": _nullable(text_format)})),
            "reasoning": _nullable(_obj({"effort": self.effort(),
                                         "summary": _nullable(_enum("auto", "concise", "detailed")),
                                         "generate_summary": _nullable(_enum("auto", "concise", "detailed"))})),
            "include": _nullable(self.str_or_list()),
            "truncation": _nullable(_enum("auto", "disabled")),
            "max_output_tokens": _nullable(_int(1)),
            "temperature": _nullable(_num(0, 2)),
            "top_p": _nullable(_num(0, 1)),
            "metadata": _nullable({"type": "object", "additionalProperties": self.s()}),
            "user": _nullable(self.s()),
            "safety_identifier": _nullable(self.s()),
            "prompt_cache_key": _nullable(self.s()),
            "background": _nullable({"type": "boolean", "const": False,
                                     "description": "background responses are not served"}),
            "conversation": {"type": "null", "description": "not supported: a 400"},
            "prompt": {"type": "null", "description": "not supported: a 400"},
        }, ("model", "input"))
        request["description"] = "Unknown fields are accepted and not forwarded."
        response = _obj({"id": {"type": "string"}, "object": _const("response"), "created_at": {"type": "integer"},
                         "status": {"type": "string"}, "model": {"type": "string"},
                         "output": {"type": "array", "items": {"type": "object"}},
                         "usage": _nullable({"type": "object"})}, ("id", "object", "status", "output"))
        items = _obj({"object": _const("list"), "data": {"type": "array", "items": {"type": "object"}},
                      "first_id": _nullable({"type": "string"}), "last_id": _nullable({"type": "string"}),
                      "has_more": {"type": "boolean"}}, ("object", "data", "has_more"))
        deleted = _obj({"id": {"type": "string"}, "object": _const("response"), "deleted": {"type": "boolean"}},
                       ("id", "deleted"))
        return {"ResponsesInputItem": item, "ResponsesTool": tool, "ResponseCreateRequest": request,
                "Response": response, "ResponseInputItems": items, "ResponseDeleted": deleted}

    # ------------------------------------------------------------------ others
    def common(self) -> dict[str, Schema]:
        openai_error = _obj({"error": _obj({
            "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"},
            "param": _nullable({"type": "string"}), "trace_id": {"type": "string"}}, ("message", "type", "code"))},
            ("error",))
        anthropic_error = _obj({"type": _const("error"), "error": _obj(
            {"type": {"type": "string"}, "message": {"type": "string"}}, ("type", "message")),
            "request_id": {"type": "string"}}, ("type", "error"))
        model = _obj({"id": {"type": "string"}, "object": _const("model"), "created": {"type": "integer"},
                      "owned_by": {"type": "string"}, "context_length": {"type": "integer"},
                      "max_output_tokens": {"type": "integer"},
                      "reasoning_effort_support_list": {"type": "array", "items": {"type": "string"}}},
                     ("id", "object"))
        return {"OpenAIError": openai_error, "AnthropicError": anthropic_error, "Model": model,
                "ModelList": _obj({"object": _const("list"), "data": {"type": "array", "items": _ref("Model")}},
                                  ("object", "data")),
                "Usage": _obj({"account": {"type": "string"}}, ("account",))}


# ============================================================================ operations
ERROR_TEXT = {400: "Invalid request: the message and `param` name the field", 401: "Missing, unknown or revoked key",
              402: "No Credit left", 403: "Not allowed for this key", 404: "Not found", 408: "Request too slow",
              413: "Body larger than `[server] max_body_bytes`", 429: "Rate limited (`Retry-After`)",
              502: "The upstream failed", 503: "Gateway or upstream overloaded (`Retry-After`)",
              504: "The upstream timed out"}


def _errors(anthropic: bool, statuses: tuple[int, ...]) -> dict[str, Any]:
    ref = _ref("AnthropicError" if anthropic else "OpenAIError")
    return {str(s): {"description": ERROR_TEXT[s], "content": {JSON: {"schema": ref}}} for s in statuses}


MODEL_CALL = (400, 401, 402, 403, 404, 408, 413, 429, *UPSTREAM_STATUSES)
READ = (400, 401, 404)


def _call(summary: str, op_id: str, request: str, response: str, anthropic: bool, *, stream: bool = True,
          statuses: tuple[int, ...] = MODEL_CALL) -> dict[str, Any]:
    ok: dict[str, Any] = {JSON: {"schema": _ref(response)}}
    if stream:
        ok[SSE] = {"schema": {"type": "object", "description": "one server-sent event (with `\"stream\": true`)",
                              "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}
    return {"post": {
        "summary": summary, "operationId": op_id,
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {"200": {"description": "The answer", "content": ok}, **_errors(anthropic, statuses)},
    }}


def _get(summary: str, op_id: str, response: str, params: list[dict[str, Any]] | None = None,
         statuses: tuple[int, ...] = READ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "responses": {
        "200": {"description": "OK", "content": {JSON: {"schema": _ref(response)}}}, **_errors(False, statuses)}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: Schema, desc: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def _id_param() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def document(lim: limits.InputLimits | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the given input limits (default: the configured ones)."""
    b = _Builder(lim or limits.current)
    schemas = {**b.chat(), **b.messages(), **b.responses(), **b.common()}
    rid = [_id_param()]
    paths: dict[str, Any] = {
        "/chat/completions": _call("OpenAI Chat Completions", "createChatCompletion", "ChatCompletionRequest",
                                   "ChatCompletion", False),
        "/messages": _call("Anthropic Messages (keys by x-api-key or Bearer; ?beta=true accepted)", "createMessage",
                           "MessagesRequest", "Message", True),
        "/messages/count_tokens": _call("Anthropic token count", "countTokens", "CountTokensRequest",
                                        "CountTokensResponse", True, stream=False, statuses=(400, 401, 404, 413)),
        "/responses": _call("OpenAI Responses", "createResponse", "ResponseCreateRequest", "Response", False),
        "/responses/{id}": {
            "get": _get("A stored response", "getResponse", "Response",
                        [_id_param(), _q("include", {"type": "string"}, "reasoning.encrypted_content")]),
            "delete": {**_get("Delete a stored response", "deleteResponse", "ResponseDeleted"), "parameters": rid},
        },
        "/responses/{id}/input_items": {"get": _get(
            "A stored response's input items", "listInputItems", "ResponseInputItems",
            [_id_param(), _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
             _q("order", _enum("asc", "desc")), _q("after", {"type": "string"})])},
        "/models": {"get": _get("The model catalog", "listModels", "ModelList", statuses=(401,))},
        "/models/{model}": {"get": _get("One model", "getModel", "Model", [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}])},
        "/usage": {"get": _get("The key's account: plan, Credit buckets, rates and usage", "getUsage", "Usage", [
            _q("from", {"type": "string"}, "unix seconds or an ISO 8601 date/time (inclusive)"),
            _q("to", {"type": "string"}, "unix seconds or an ISO 8601 date/time (exclusive)"),
            _q("model", {"type": "string"})])},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenAPI", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {JSON: {"schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "stepplan gateway", "version": "1",
                 "description": "The Step Plan gateway's own endpoints. Errors use the OpenAI envelope, except under "
                                "/messages (Anthropic's). The only 5xx a client should see are 502, 503 and 504 "
                                "(the upstream failed, the gateway or upstream is overloaded, the upstream timed "
                                f"out). Input limits: {b.lim.max_messages} messages or input items, "
                                f"{b.lim.max_tools} tools, {b.lim.max_content_parts} content parts, strings of "
                                f"{b.lim.max_string_chars} characters; see docs/security.md."},
        "servers": [{"url": "/step_plan/v1"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": schemas,
        },
    }


def document_bytes(lim: limits.InputLimits | None = None) -> bytes:
    return orjson.dumps(document(lim))


async def openapi_json(request: HTTPRequest) -> Response:
    """``GET /step_plan/v1/openapi.json``: the document built at start-up (no key needed)."""
    body = getattr(request.app.state, "openapi", None)
    if body is None:
        body = request.app.state.openapi = document_bytes()
    return Response(body, media_type=JSON)


ROUTES: list = [("/step_plan/v1/openapi.json", openapi_json, ["GET"])]

__all__ = ["ROUTES", "UPSTREAM_STATUSES", "document", "document_bytes"]

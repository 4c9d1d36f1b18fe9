"""The OpenAPI document (stepplan/api/openapi.py) against the request codecs it describes.

The decoders' source is read (AST): every key a decoder reads from a wire object must be a
property of the schema for that object, and every decoder function that reads keys must be
mapped here. A field added to a codec without the document fails this test."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType
from typing import Any

import httpx
import pytest

from stepplan.api.openapi import document
from stepplan.protocols import anthropic_request, limits, openai_request, responses_request
from stepplan.protocols import effort as efforts
from tests.conftest import Gateway

DOC = document(limits.InputLimits())
SCHEMAS = DOC["components"]["schemas"]


# ------------------------------------------------------------------ schema navigation
def variants(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a value may match: through $ref, anyOf/oneOf and array items."""
    if "$ref" in schema:
        return variants(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    out: list[dict[str, Any]] = []
    for key in ("anyOf", "oneOf"):
        for s in schema.get(key, ()):
            out += variants(s)
    if schema.get("type") == "array" and "items" in schema:
        out += variants(schema["items"])
    if "properties" in schema:
        out.append(schema)
    return out


def props(component: str, *path: str) -> set[str]:
    level = variants({"$ref": f"#/components/schemas/{component}"})
    for name in path:
        level = [v for s in level for v in variants(s.get("properties", {}).get(name, {}))]
    return {p for s in level for p in s.get("properties", {})}


# ------------------------------------------------------------------ what the decoders read
READERS = {"get", "opt_str", "opt_bool", "opt_int", "opt_num"}


def reads(module: ModuleType) -> dict[tuple[str, str], set[str]]:
    """(function, variable) → the string keys read from that variable: ``v.get("k")``, ``v["k"]``,
    ``"k" in v``, ``c.opt_*(v, "k")``."""
    tree = ast.parse(inspect.getsource(module))
    found: dict[tuple[str, str], set[str]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            var = key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in READERS:
                if node.func.attr == "get" and isinstance(node.func.value, ast.Name) and node.args:
                    var, arg = node.func.value.id, node.args[0]
                elif node.func.attr != "get" and len(node.args) >= 2 and isinstance(node.args[0], ast.Name):
                    var, arg = node.args[0].id, node.args[1]
                else:
                    continue
                key = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(
                    node.value, ast.Name) and isinstance(
                        node.slice, ast.Constant) and isinstance(node.slice.value, str):
                var, key = node.value.id, node.slice.value
            elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                  and isinstance(node.left.value, str) and isinstance(node.ops[0], (ast.In, ast.NotIn))
                  and isinstance(node.comparators[0], ast.Name)):
                var, key = node.comparators[0].id, node.left.value
            if var is not None and key is not None:
                found.setdefault((fn.name, var), set()).add(key)
    return found


# (function, variable) → the schema it is read from (component, property path); None: not wire input
OPENAI: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("decode_request", "b"): ("ChatCompletionRequest",),
    ("decode_request", "th"): ("ChatCompletionRequest", "thinking"),
    ("decode_request", "rf"): ("ChatCompletionRequest", "response_format"),
    ("decode_request", "js"): ("ChatCompletionRequest", "response_format", "json_schema"),
    ("_decode_messages", "m"): ("ChatMessage",),
    ("_system_of", "m"): ("ChatMessage",),
    ("_mark_last", "m"): ("ChatMessage",),
    ("_decode_part", "p"): ("ChatMessage", "content"),
    ("_decode_part", "iu"): ("ChatMessage", "content", "image_url"),
    ("_decode_part", "vu"): ("ChatMessage", "content", "video_url"),
    ("_decode_part", "ia"): ("ChatMessage", "content", "input_audio"),
    ("_decode_part", "f"): ("ChatMessage", "content", "file"),
    ("_decode_tool_calls", "tc"): ("ChatMessage", "tool_calls"),
    ("_decode_tool_calls", "fn"): ("ChatMessage", "tool_calls", "function"),
    ("_decode_tools", "t"): ("ChatCompletionRequest", "tools"),
    ("_decode_tools", "fn"): ("ChatCompletionRequest", "tools", "function"),
    ("_decode_tools", "server_fn"): ("ChatCompletionRequest", "tools", "function"),
    ("_decode_tool_choice", "v"): ("ChatCompletionRequest", "tool_choice"),
    ("_decode_tool_choice", "fn"): ("ChatCompletionRequest", "tool_choice", "function"),
    # the upstream side (encoders) reads the bodies it builds itself
    ("_content", "p"): None, ("_merge_user", "p"): None,
}
ANTHROPIC: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("decode_request", "b"): ("MessagesRequest",),
    ("_decode_messages", "m"): ("AnthropicMessage",),
    ("_block", "b"): ("AnthropicMessage", "content"),
    ("_result_content", "b"): ("AnthropicToolResultBlock", "content"),
    ("_thinking", "b"): ("AnthropicThinkingBlock",),
    ("_image", "b"): ("AnthropicImageBlock",),
    ("_image", "src"): ("AnthropicImageBlock", "source"),
    ("_document", "b"): ("AnthropicDocumentBlock",),
    ("_document", "src"): ("AnthropicDocumentBlock", "source"),
    ("_search_result", "b"): ("AnthropicSearchResultBlock",),
    ("_system_text", "b"): ("MessagesRequest", "system"),
    ("_decode_tools", "t"): ("MessagesRequest", "tools"),
    ("_decode_tool_choice", "tc"): ("MessagesRequest", "tool_choice"),
    ("_decode_thinking", "th"): ("MessagesRequest", "thinking"),
    ("_decode_output_config", "oc"): ("MessagesRequest", "output_config"),
    ("_decode_output_config", "fmt"): ("MessagesRequest", "output_config", "format"),
    # the upstream side (encoders) reads the bodies it builds itself
    ("_marked", "b"): None, ("_media", "b"): None, ("_tool_result", "p"): None, ("_breakpoints", "body"): None,
    ("_breakpoints", "b"): None, ("_breakpoints", "m"): None, ("_breakpoints", "x"): None,
    ("limit_breakpoints", "b"): None, ("encode_messages", "msg"): None, ("encode_request", "choice"): None,
    ("_tools", "t"): None, ("_tools", "spec"): None, ("_tool_result", "out"): None, ("_breakpoints", "t"): None,
    ("encode_messages", "p"): None,
}
RESPONSES: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("decode_request", "b"): ("ResponseCreateRequest",),
    ("decode_request", "reasoning"): ("ResponseCreateRequest", "reasoning"),
    ("_decode_tools", "t"): ("ResponseCreateRequest", "tools"),
    ("add", "t"): ("ResponseCreateRequest", "tools"),
    ("custom_parameters", "f"): ("ResponseCreateRequest", "tools", "format"),
    ("_decode_tool_choice", "tc"): ("ResponseCreateRequest", "tool_choice"),
    ("_decode_tool_choice", "a"): None,  # allowed_tools entries: any object; only function/custom ones count
    ("_text_format", "t"): ("ResponseCreateRequest", "text"),
    ("_text_format", "f"): ("ResponseCreateRequest", "text", "format"),
    ("_image", "p"): ("ResponseCreateRequest", "input", "content"),
    ("_parts", "p"): ("ResponseCreateRequest", "input", "content"),
    ("_message", "m"): ("ResponseCreateRequest", "input"),
    ("_item", "it"): ("ResponseCreateRequest", "input"),
    ("listed_items", "item"): None,  # the stored copy of the items, built by the gateway
}


@pytest.mark.parametrize(("module", "mapping"), [(openai_request, OPENAI), (anthropic_request, ANTHROPIC),
                                                 (responses_request, RESPONSES)],
                         ids=["chat", "messages", "responses"])
def test_every_field_a_decoder_reads_is_in_the_document(module: ModuleType,
                                                        mapping: dict[tuple[str, str], tuple[str, ...] | None]) -> None:
    found = reads(module)
    unmapped = sorted(set(found) - set(mapping))
    assert not unmapped, f"decoder functions reading keys that the test does not map to a schema: {unmapped}"
    missing = []
    for (fn, var), keys in found.items():
        target = mapping[(fn, var)]
        if target is None:
            continue
        known = props(*target)
        assert known, f"{target} has no properties in the document"
        missing += [f"{fn}: {var}[{k!r}] not in {'.'.join(target)}" for k in sorted(keys - known)]
    assert not missing, "\n".join(missing)
    assert all(k in found for k, v in mapping.items() if v is not None), "a mapped decoder no longer reads keys"


def test_enums_and_limits_follow_the_codecs() -> None:
    req = SCHEMAS["ChatCompletionRequest"]["properties"]
    assert req["reasoning_effort"]["anyOf"][0]["enum"] == list(efforts.WORDS)
    assert req["messages"]["maxItems"] == limits.InputLimits().max_messages
    assert SCHEMAS["MessagesRequest"]["required"] == ["model", "max_tokens", "messages"]
    small = document(limits.InputLimits(max_messages=7, max_tools=3))
    assert small["components"]["schemas"]["ResponseCreateRequest"]["properties"]["tools"]["anyOf"][0][
        "maxItems"] == 3
    assert small["components"]["schemas"]["MessagesRequest"]["properties"]["messages"]["maxItems"] == 7


def test_the_document_is_valid_openapi_3_1() -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR  # the OAS 3.1 meta-schema

    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(DOC)]
    assert not errors, errors[:3]


def test_the_gateway_serves_the_document_without_a_key(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.openai_base}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert {"/chat/completions", "/messages", "/responses", "/models", "/usage"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "x-api-key"

"""Property-based fuzzing of the three request decoders, in-process (issue 16 §3).

For any JSON body: ``decode_request`` returns a request or raises ``InvalidRequest`` (or its
``UnsupportedContent``) whose ``param`` names the field, never another exception; a decoded
request encodes for both upstream protocols (or is refused with an ``InvalidRequest``), and the
encoded body serializes. Bodies are drawn three ways: any JSON; objects built from the field
names and enum words of the gateway's OpenAPI document (so they reach deep into the decoders);
and valid bodies with one value replaced by any JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepplan.api.openapi import document
from stepplan.errors import InvalidRequest
from stepplan.protocols import anthropic_request, limits, openai_request, responses_request
from stepplan.protocols.canonical import Request
from stepplan.reasoning import Signer
from stepplan.reasoning_seal import Sealer
from tests.fuzz.conftest import case

pytestmark = pytest.mark.fuzz

SECRET = b"fuzz-secret-0123456789abcdef0123"
SIGNER = Signer(SECRET)
SEALER = Sealer(SECRET)
DOC = document(limits.InputLimits())


def _vocabulary() -> tuple[list[str], list[str]]:
    """Every property name and every enum/const word in the document."""
    names: set[str] = set()
    words: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            names.update(v.get("properties", {}))
            words.update(x for x in v.get("enum", ()) if isinstance(x, str))
            if isinstance(v.get("const"), str):
                words.add(v["const"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(DOC["components"]["schemas"])
    return sorted(names), sorted(words)


NAMES, WORDS = _vocabulary()
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e30, -1e30, 0.5, 2.0, -0.0])
           | st.text(max_size=20) | st.sampled_from(WORDS)
           | st.sampled_from(["data:image/png;base64,AAAA", "data:", "data:video/mp4,x", "http://x/y.png",
                              "file:///etc/passwd", "{", '{"a": 1}', "x-anthropic-billing-header: x"]))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)
# objects keyed by the document's field names: they reach the decoders' branches
shaped = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(NAMES), inner, max_size=6), max_leaves=40)

MODEL = st.sampled_from(["step-3.5-flash", "step-router-v1", "", "x"])


@st.composite
def chat_body(draw: st.DrawFn) -> Any:
    return {"model": draw(MODEL), "messages": draw(st.lists(shaped, min_size=1, max_size=4)),
            **draw(st.dictionaries(st.sampled_from(NAMES), shaped, max_size=5))}


@st.composite
def messages_body(draw: st.DrawFn) -> Any:
    return {"model": draw(MODEL), "max_tokens": draw(st.integers(-1, 2**40)),
            "messages": draw(st.lists(shaped, min_size=1, max_size=4)),
            **draw(st.dictionaries(st.sampled_from(NAMES), shaped, max_size=5))}


@st.composite
def responses_body(draw: st.DrawFn) -> Any:
    return {"model": draw(MODEL), "input": draw(st.text(max_size=10) | st.lists(shaped, min_size=1, max_size=4)),
            **draw(st.dictionaries(st.sampled_from(NAMES), shaped, max_size=5))}


VALID = {
    "chat": {"model": "m", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "max_tokens": 10, "temperature": 0.5, "stop": ["x"], "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        "reasoning_effort": "low", "thinking": {"type": "enabled", "budget_tokens": 100}},
    "messages": {"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "s"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "AA"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "ok"}]}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048}, "top_k": 3, "stop_sequences": ["x"],
        "output_config": {"effort": "high"}, "metadata": {"user_id": "u"}},
    "responses": {"model": "m", "instructions": "i", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}},
                  {"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "g"}]}],
        "tool_choice": {"type": "function", "name": "f"}, "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "medium", "summary": "auto"}, "max_output_tokens": 10, "store": False},
}


def paths(v: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(v, dict):
        for k, x in v.items():
            out += paths(x, (*here, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += paths(x, (*here, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, protocol: str) -> Any:
    """A valid body with one value (anywhere) replaced by any JSON."""
    body = orjson.loads(orjson.dumps(VALID[protocol]))
    where = draw(st.sampled_from(paths(body)[1:]))
    node = body
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = draw(any_json | shaped)
    return body


# ------------------------------------------------------------------ the property
def _encode_both(req: Request) -> None:
    for encode in (lambda: openai_request.encode_request(req, "up", stream=req.stream),
                   lambda: anthropic_request.encode_request(req, "up", stream=req.stream, default_max_tokens=1024)):
        try:
            body = encode()
        except InvalidRequest:
            continue  # content this upstream protocol cannot take: a 400 in the caller's protocol
        orjson.dumps(body)


def _forwardable(body: Any) -> bool:
    """What ``api.common.read_json`` lets through: a body that serializes again (no integer beyond
    64 bits, nothing nested too deeply); anything else is its 400 before any codec runs."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        return False
    return True


def decodes_or_names_the_field(protocol: str, body: Any) -> None:
    with case(f"codec {protocol}", repr(body)[:200]):
        try:
            if protocol == "chat":
                req = openai_request.decode_request(body)
            elif protocol == "messages":
                req = anthropic_request.decode_request(body, SIGNER)
            else:
                req, _ = responses_request.decode_request(body, SEALER.open)
        except InvalidRequest as exc:
            assert exc.param, f"InvalidRequest without the field it is about: {exc.message!r}"
            return
        if _forwardable(body):
            _encode_both(req)


BODIES = {"chat": chat_body(), "messages": messages_body(), "responses": responses_body()}


@pytest.mark.parametrize("protocol", ["chat", "messages", "responses"])
@settings(settings.get_profile("stepplan-codecs"))
@given(data=st.data())
def test_any_json_decodes_or_is_a_400_naming_the_field(protocol: str, data: st.DataObject) -> None:
    decodes_or_names_the_field(protocol, data.draw(any_json))


@pytest.mark.parametrize("protocol", ["chat", "messages", "responses"])
@settings(settings.get_profile("stepplan-codecs"))
@given(data=st.data())
def test_bodies_shaped_like_the_document_decode_or_name_the_field(protocol: str, data: st.DataObject) -> None:
    decodes_or_names_the_field(protocol, data.draw(BODIES[protocol]))


@pytest.mark.parametrize("protocol", ["chat", "messages", "responses"])
@settings(settings.get_profile("stepplan-codecs"))
@given(data=st.data())
def test_a_valid_body_with_one_value_replaced_decodes_or_names_the_field(protocol: str,
                                                                        data: st.DataObject) -> None:
    decodes_or_names_the_field(protocol, data.draw(mutated(protocol)))


@pytest.mark.parametrize("protocol", ["chat", "messages", "responses"])
def test_the_valid_bodies_decode(protocol: str) -> None:
    """The seeds of the mutation strategy are themselves accepted (else it would only test refusals)."""
    if protocol == "chat":
        openai_request.decode_request(VALID[protocol])
    elif protocol == "messages":
        anthropic_request.decode_request(VALID[protocol], SIGNER)
    else:
        responses_request.decode_request(VALID[protocol], SEALER.open)

"""Bugs the fuzzers found, each pinned (the CI profile's fixed cases need not draw them again).

* A list or object where a type word belongs reached a set look-up: ``unhashable type``, a 500.
* A tool-call object holding an integer beyond 64 bits was re-serialized by the decoder and raised
  outside the 400 path (``api.common.read_json`` refuses such bodies first; the decoder must too).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stepplan.errors import InvalidRequest
from stepplan.protocols import anthropic_request, openai_request, responses_request
from stepplan.protocols._check import cache_mark
from stepplan.reasoning import Signer
from stepplan.reasoning_seal import Sealer
from tests.conftest import Gateway

SIGNER = Signer(b"regression-secret-0123456789abcdef")
SEALER = Sealer(b"regression-secret-0123456789abcdef")
USER = {"role": "user", "content": "hi"}

UNHASHABLE: dict[str, tuple[str, dict[str, Any], str]] = {
    "messages block type": ("messages", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": [], "text": "x"}]}]}, "messages[0].content[0].type"),
    "responses tool type": ("responses", {"model": "m", "input": "hi", "tools": [{"type": {"a": 1}}]},
                            "tools[0].type"),
    "responses item type": ("responses", {"model": "m", "input": [{"type": ["message"]}]}, "input[0].type"),
    "responses tool_choice type": ("responses", {"model": "m", "input": "hi", "tool_choice": {"type": []}},
                                   "tool_choice"),
}


def decode(protocol: str, body: dict[str, Any]) -> Any:
    if protocol == "chat":
        return openai_request.decode_request(body)
    if protocol == "messages":
        return anthropic_request.decode_request(body, SIGNER)
    return responses_request.decode_request(body, SEALER.open)


@pytest.mark.parametrize("name", sorted(UNHASHABLE))
def test_a_list_or_object_for_a_type_word_is_a_400_naming_it(name: str) -> None:
    protocol, body, param = UNHASHABLE[name]
    with pytest.raises(InvalidRequest) as err:
        decode(protocol, body)
    assert err.value.param == param


def test_a_cache_control_ttl_that_is_not_a_word_is_a_plain_mark() -> None:
    assert cache_mark({"cache_control": {"type": "ephemeral", "ttl": ["1h"]}}) is True
    assert cache_mark({"cache_control": {"type": "ephemeral", "ttl": "1h"}}) == "1h"


@pytest.mark.parametrize(("protocol", "body", "param"), [
    ("chat", {"model": "m", "messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": {"n": 2**64}}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ("messages", {"model": "m", "max_tokens": 5, "messages": [USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"n": -(2**70)}}]}]}, "messages[1].content[0].input"),
])
def test_a_tool_call_object_that_cannot_be_forwarded_is_a_400_naming_it(protocol: str, body: dict[str, Any],
                                                                        param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        decode(protocol, body)
    assert err.value.param == param


def test_a_list_for_a_block_type_is_a_400_from_the_live_gateway(gateway: Gateway, key: str) -> None:
    r = httpx.post(f"{gateway.openai_base}/messages", headers={"x-api-key": key}, timeout=30,
                   json=UNHASHABLE["messages block type"][1] | {"model": "step-3.5-flash"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text

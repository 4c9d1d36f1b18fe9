"""Builders for upstream replies and readers for raw Anthropic SSE, shared by these tests."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.fakes.upstream import openai_chunk


# ------------------------------------------------------------------ Anthropic-protocol upstream replies
def message_start(usage: dict[str, Any] | None = None, model: str = "fake") -> tuple[str, dict[str, Any]]:
    u = usage or {"input_tokens": 11, "output_tokens": 1, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0}
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_up1", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": u}})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, usage: dict[str, Any] | None = None,
                  stop_sequence: str | None = None) -> tuple[str, dict[str, Any]]:
    return ("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                              "usage": usage or {"output_tokens": 7}})


MESSAGE_STOP = ("message_stop", {"type": "message_stop"})


def anthropic_stream(*, thinking: str | None = None, signature: str = "upstream-sig", text: str | None = None,
                     tools: list[tuple[str, str, list[str]]] = (), stop_reason: str | None = None,
                     usage_in: dict[str, Any] | None = None, usage_out: dict[str, Any] | None = None) -> list[Any]:
    """A full upstream stream: optional thinking, text, then tool calls whose JSON arrives in fragments."""
    ev: list[Any] = [message_start(usage_in)]
    i = 0
    if thinking is not None:
        ev += [block_start(i, {"type": "thinking", "thinking": "", "signature": ""}),
               block_delta(i, {"type": "thinking_delta", "thinking": thinking}),
               block_delta(i, {"type": "signature_delta", "signature": signature}), block_stop(i)]
        i += 1
    if text is not None:
        ev += [block_start(i, {"type": "text", "text": ""}),
               block_delta(i, {"type": "text_delta", "text": text}), block_stop(i)]
        i += 1
    for call_id, name, fragments in tools:
        ev.append(block_start(i, {"type": "tool_use", "id": call_id, "name": name, "input": {}}))
        ev += [block_delta(i, {"type": "input_json_delta", "partial_json": f}) for f in fragments]
        ev.append(block_stop(i))
        i += 1
    ev += [message_delta(stop_reason or ("tool_use" if tools else "end_turn"), usage_out), MESSAGE_STOP]
    return ev


# ------------------------------------------------------------------ OpenAI-protocol upstream replies
def openai_tool_stream(calls: list[tuple[str, str, list[str]]], *, reasoning: str | None = None,
                       text: str | None = None, usage: dict[str, Any] | None = None) -> list[Any]:
    """Tool calls streamed OpenAI-style: id and name first, then argument fragments, index by index."""
    chunks: list[Any] = [openai_chunk({"role": "assistant", "content": ""})]
    if reasoning:
        chunks.append(openai_chunk({"reasoning_content": reasoning}))
    if text:
        chunks.append(openai_chunk({"content": text}))
    for n, (call_id, name, fragments) in enumerate(calls):
        chunks.append(openai_chunk({"tool_calls": [{"index": n, "id": call_id, "type": "function",
                                                    "function": {"name": name, "arguments": ""}}]}))
        for f in fragments:
            chunks.append(openai_chunk({"tool_calls": [{"index": n, "function": {"arguments": f}}]}))
    chunks.append(openai_chunk({}, "tool_calls" if calls else "stop"))
    chunks.append({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [],
                   "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    chunks.append("[DONE]")
    return chunks


# ------------------------------------------------------------------ reading what the gateway sent
def parse_sse(raw: str) -> list[tuple[str | None, dict[str, Any]]]:
    """Raw SSE text → [(event name, JSON data)], in order."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            out.append((event, json.loads("\n".join(data))))
    return out


def post_stream(url: str, key: str, body: dict[str, Any], *, path: str = "/v1/messages") -> tuple[int, str]:
    with httpx.stream("POST", url + path, headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                      json={**body, "stream": True}, timeout=30) as r:
        return r.status_code, r.read().decode()


def check_block_sequence(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    """The Anthropic stream grammar: message_start, blocks start → deltas → stop in index order
    (one open at a time, deltas matching the block's type), message_delta, message_stop."""
    names = [e for e, _ in events if e != "ping"]
    assert names[0] == "message_start", names
    assert names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_start") == 1 and names.count("message_stop") == 1
    open_index: int | None = None
    open_type = ""
    next_index = 0
    allowed = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"},
               "tool_use": {"input_json_delta"}}
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None, f"block {data['index']} started while {open_index} is open"
            assert data["index"] == next_index, f"expected index {next_index}, got {data['index']}"
            open_index, open_type = data["index"], data["content_block"]["type"]
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index, f"delta for block {data['index']} that is not open"
            assert data["delta"]["type"] in allowed[open_type], (open_type, data["delta"]["type"])
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "message_delta while a block is open"

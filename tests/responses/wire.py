"""Helpers for Responses streams in tests: parse SSE text, and check every event the way the
official SDK reads it (its typed models, validated strictly, and its stream accumulator)."""

from __future__ import annotations

import json
from typing import Any

import pydantic
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        event, data = "", ""
        for line in frame.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((event, json.loads(data)))
    return out


def check_events(events: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Every event valid for the SDK, numbered 0, 1, 2, …, items opened and closed in pairs, one
    terminal event at the end; returns the typed events."""
    assert events, "empty stream"
    typed = []
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    open_items: dict[int, dict[str, Any]] = {}
    done_indices: list[int] = []
    for n, (name, data) in enumerate(events):
        assert name == data["type"], (name, data)
        assert data["sequence_number"] == n, f"event {n} has sequence_number {data['sequence_number']}"
        ev = EVENT.validate_python(data)
        typed.append(ev)
        state.handle_event(ev)  # the SDK's own accumulator: raises on inconsistent identities
        if name == "response.output_item.added":
            assert data["output_index"] not in open_items and data["output_index"] not in done_indices
            assert data["output_index"] == len(open_items) + len(done_indices), "output indices must be contiguous"
            open_items[data["output_index"]] = data["item"]
        elif name == "response.output_item.done":
            added = open_items.pop(data["output_index"])
            assert added["id"] == data["item"]["id"] and added["type"] == data["item"]["type"]
            done_indices.append(data["output_index"])
        elif "output_index" in data:
            assert data["output_index"] in open_items, f"{name} for an item that is not open"
    assert events[0][0] == "response.created" and events[1][0] == "response.in_progress"
    terminal = [i for i, (name, _) in enumerate(events) if name in TERMINAL]
    assert terminal == [len(events) - 1], "exactly one terminal event, at the end"
    if events[-1][0] != "response.failed":
        assert not open_items, f"items left open: {open_items}"
        final = events[-1][1]["response"]
        assert [i["id"] for i in final["output"]] == [
            d["item"]["id"] for name, d in events if name == "response.output_item.done"]
    return typed


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]

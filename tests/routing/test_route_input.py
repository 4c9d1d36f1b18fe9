"""Serving and training build the router's input the same way.

Serving: the client's codec decodes the request, then ``routing.inputs.route_input``.
Training and evaluation (``bench/router``): the OpenAI ``messages`` of a data row, through
``route_input_from_openai_messages`` (which ends in the same ``route_input``). These tests feed
both paths the same conversations -- every real client capture in ``shared/captures`` and a
sample of the router's dev data -- and require the same RouteInput and the same features.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from stepplan.protocols import anthropic_request, openai_request
from stepplan.reasoning import Signer
from stepplan.routing.features import extract
from stepplan.routing.inputs import route_input, route_input_from_openai_messages
from stepplan.routing.types import RouteInput

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
for candidate in (ROOT.parent / "shared", Path("/work/shared")):
    if candidate.is_dir():
        SHARED = candidate
        break
CAPTURES = SHARED / "captures"
DEV_DATA = SHARED / "router-data-dev"
SIGNER = Signer(b"test-secret")


def _train_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_router_train", ROOT / "bench" / "router" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_router_train", module)
    spec.loader.exec_module(module)
    return module


def _captures() -> list[Path]:
    if not CAPTURES.is_dir():
        return []
    out = []
    for p in sorted(CAPTURES.glob("*.json")):
        body = json.loads(p.read_text()).get("body")
        if isinstance(body, dict) and isinstance(body.get("messages"), list):
            out.append(p)
    return out


def _same(serving: RouteInput, training: RouteInput) -> None:
    assert training.turns == serving.turns
    assert (training.n_tools, training.effort, training.thinking) == (serving.n_tools, serving.effort,
                                                                     serving.thinking)
    assert extract(training) == extract(serving)


@pytest.mark.skipif(not _captures(), reason="shared/captures not available")
@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.stem)
def test_serving_and_training_agree_on_real_client_requests(path: Path) -> None:
    capture = json.loads(path.read_text())
    body = capture["body"]
    if capture["path"].endswith("/chat/completions"):
        req = openai_request.decode_request(body)
        messages = body["messages"]
    else:  # an Anthropic client: training sees the conversation in OpenAI form, as the gateway renders it
        req = anthropic_request.decode_request(body, SIGNER, count_only=capture["path"].endswith("count_tokens"))
        if any(m.role == "system" for m in req.messages):
            pytest.skip("a mid-conversation system message has no OpenAI form: the codec folds it into the "
                        "next user turn as a <system-reminder>, so there is no training row to compare with")
        messages = openai_request.encode_messages(req, replay_reasoning=True)
    serving = route_input(req)
    training = route_input_from_openai_messages(messages, body.get("tools"), effort=req.effort,
                                                thinking=req.thinking)
    assert serving.turns, "a capture with messages gives the router some turns"
    _same(serving, training)


def _dev_rows(per_file: int = 150) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(DEV_DATA.glob("*.jsonl")) if DEV_DATA.is_dir() else []:
        lines = [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        step = max(1, len(lines) // per_file)
        rows.extend(json.loads(line) for line in lines[::step][:per_file])
    return rows


@pytest.mark.skipif(not DEV_DATA.is_dir(), reason="shared/router-data-dev not available")
def test_serving_and_training_agree_on_router_dev_data() -> None:
    train = _train_module()
    rows = _dev_rows()
    assert len(rows) >= 500
    for row in rows:
        item = train.Item(source=row["source"], messages=row["messages"], strong=row["strong_score"],
                          weak=row["weak_score"])
        serving = route_input(openai_request.decode_request({"model": "step-router-v1", "messages": row["messages"]}))
        _same(serving, item.route_input())


def test_tool_results_and_mid_conversation_system_messages_agree() -> None:
    """The shapes where the two paths used to differ: consecutive tool results (one turn, as
    the codec merges them), a multi-part system prompt, and a system message mid-conversation."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "user", "content": "run both"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "one"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "two"}]},
        {"role": "system", "content": "reminder"},
        {"role": "user", "content": "and?"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}},
             {"type": "function", "function": {"name": "g", "parameters": {}}}]
    serving = route_input(openai_request.decode_request({"model": "m", "messages": messages, "tools": tools,
                                                         "reasoning_effort": "high"}))
    _same(serving, route_input_from_openai_messages(messages, tools, effort="high"))
    assert serving.turns == [("system", "be brief"), ("user", "run both"), ("assistant", ""),
                             ("tool", "one\ntwo"), ("system", "reminder"), ("user", "and?")]

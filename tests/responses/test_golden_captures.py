"""Golden tests from real first-turn requests of Codex 0.169.0 and Kilo 7.7.7 (@ai-sdk/openai)
(tests/golden/responses/): decode them, replay them through the gateway (headers as captured) to a fake
upstream of each protocol and to the router, and check what the upstream received and every event
the client got back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepplan.protocols.canonical import Text
from stepplan.protocols.responses_request import decode_request
from stepplan.reasoning_seal import Sealer
from tests.anthropic.wire import anthropic_stream, openai_tool_stream
from tests.conftest import Gateway
from tests.fakes.upstream import DEFAULT_TEXT, FakeUpstream
from tests.responses.wire import check_events, parse_sse

CAPTURES = Path(__file__).resolve().parent.parent / "golden" / "responses"
ALL = sorted(p.name for p in CAPTURES.glob("*.json"))
DROP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
CODEX_TOOLS = ["exec_command", "write_stdin", "request_user_input", "view_image", "multi_agent_v1__close_agent",
               "multi_agent_v1__resume_agent", "multi_agent_v1__send_input", "multi_agent_v1__spawn_agent",
               "multi_agent_v1__wait_agent", "get_goal", "create_goal", "update_goal"]


def load(name: str) -> dict[str, Any]:
    return json.loads((CAPTURES / name).read_text())


def replay(gw: Gateway, key: str, cap: dict[str, Any], body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {k: v for k, v in cap["headers"].items() if k.lower() not in DROP_HEADERS}
    headers["Authorization"] = f"Bearer {key}"
    return httpx.post(gw.url + cap["path"], headers=headers, content=json.dumps(body or cap["body"]).encode(),
                      timeout=60)


def test_there_are_captures() -> None:
    assert len(ALL) == 3


@pytest.mark.parametrize("name", ALL)
def test_decode(name: str) -> None:
    body = load(name)["body"]
    req, shape = decode_request(body, Sealer(b"s").open)
    assert req.model == "step-3.7-flash" and req.stream is True
    assert shape.store is False and shape.include_encrypted and shape.input_items == []
    assert req.session_id == body["prompt_cache_key"]
    assert req.system and all(isinstance(t, Text) and t.text for t in req.system)
    assert req.messages[-1].role == "user" and all(m.role == "user" for m in req.messages)
    if name.startswith("codex"):
        assert [t.name for t in req.tools] == CODEX_TOOLS
        assert shape.client_tool("multi_agent_v1__spawn_agent").namespace == "multi_agent_v1"
        assert shape.web_search == [{"type": "web_search", "external_web_access": False}]
        assert req.parallel_tool_calls is True and shape.summary
        assert req.system[0].text.startswith("You are a coding agent running in the Codex CLI")
        assert req.messages[-1].content == [Text("say hi")]
        assert req.effort == ("low" if "say-hi" in name else None)
    else:
        assert len(req.tools) == len(body["tools"]) and req.max_tokens == 8192
        assert req.system[0].text.startswith("You are Kilo")
        assert not shape.web_search and not shape.summary


def _upstream_reply(fake: FakeUpstream, upstream: str, tool: bool) -> None:
    if upstream == "openai":
        fake.queue_sse(openai_tool_stream([("call_9", "multi_agent_v1__spawn_agent", ['{"message":', '"go"}'])],
                                          reasoning="Spawn one.", text="On it.") if tool else
                       openai_tool_stream([], reasoning="Greet.", text=DEFAULT_TEXT))
    else:
        fake.queue_sse(anthropic_stream(thinking="Spawn one.", text="On it.",
                                        tools=[("toolu_9", "multi_agent_v1__spawn_agent", ['{"message":', '"go"}'])])
                       if tool else anthropic_stream(thinking="Greet.", text=DEFAULT_TEXT))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("upstream", ["openai", "anthropic", "router"])
def test_replay(name: str, upstream: str, gateway: Gateway, key: str, agw: Gateway, akey: str,
                fake: FakeUpstream) -> None:
    cap = load(name)
    gw, k = (agw, akey) if upstream == "anthropic" else (gateway, key)
    body = cap["body"] if upstream != "router" else {**cap["body"], "model": "step-router-v1"}
    codex = name.startswith("codex")
    _upstream_reply(fake, "anthropic" if upstream == "anthropic" else "openai", tool=codex)
    r = replay(gw, k, cap, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    if codex:
        assert r.headers["x-stepplan-dropped-tools"] == "web_search"
    events = parse_sse(r.text)
    check_events(events)
    final = events[-1][1]["response"]
    assert events[-1][0] == "response.completed" and final["model"] == body["model"]
    sent = fake.last.body
    if upstream == "anthropic":
        assert fake.last.path == "/v1/messages"
        assert sent["system"].startswith(cap["body"]["input"][0]["content"][0]["text"][:40] if codex
                                         else "You are Kilo")
        names = [t["name"] for t in sent["tools"]]
    else:
        assert fake.last.path == "/v1/chat/completions"
        assert sent["messages"][0]["role"] == "system"
        names = [t["function"]["name"] for t in sent["tools"]]
        if upstream == "router":
            assert sent["model"] in ("deepseek-v4-pro", "step-3.5-flash")  # the router's two engines
    assert "web_search" not in json.dumps(sent["tools"])
    assert names == (CODEX_TOOLS if codex else [t["name"] for t in cap["body"]["tools"]])
    assert "client_metadata" not in sent and "prompt_cache_key" not in sent
    kinds_out = [i["type"] for i in final["output"]]
    if codex:
        assert kinds_out == ["reasoning", "message", "function_call"]
        rs, msg, call = final["output"]
        assert rs["summary"] == [{"type": "summary_text", "text": "Spawn one."}]  # Codex asks for summaries
        assert rs["encrypted_content"].startswith("spr1.")
        assert msg["content"][0]["text"] == "On it."
        assert (call["name"], call["namespace"], call["arguments"]) == ("spawn_agent", "multi_agent_v1",
                                                                       '{"message":"go"}')
    else:
        assert kinds_out == ["reasoning", "message"]
        assert final["output"][0]["summary"] == []  # Kilo did not ask for a summary…
        assert final["output"][0]["encrypted_content"]  # …but did include the sealed reasoning
        assert final["output"][1]["content"][0]["text"] == DEFAULT_TEXT


def test_codex_second_turn_replays_reasoning_and_tool_output(gateway: Gateway, key: str, agw: Gateway, akey: str,
                                                             fake: FakeUpstream) -> None:
    """The next request Codex makes after running the tool: the whole history again, with the reasoning item
    the gateway sealed, the function call and its output."""
    cap = load("codex-0.169.0-exec-say-hi.json")
    for gw, k, upstream in ((gateway, key, "openai"), (agw, akey, "anthropic")):
        _upstream_reply(fake, upstream, tool=True)
        first = parse_sse(replay(gw, k, cap).text)
        output = first[-1][1]["response"]["output"]
        output_ids = [i["call_id"] for i in output if i["type"] == "function_call"]
        second = {**cap["body"], "input": [*cap["body"]["input"], *output,
                                           {"type": "function_call_output", "call_id": output_ids[0],
                                            "output": "agent spawned"}]}
        r = replay(gw, k, cap, second)
        assert r.status_code == 200, r.text
        check_events(parse_sse(r.text))
        sent = fake.last.body
        if upstream == "openai":
            assistant = sent["messages"][-2]
            assert assistant["reasoning_content"] == "Spawn one." and assistant["content"] == "On it."
            assert assistant["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
            assert sent["messages"][-1] == {"role": "tool", "tool_call_id": output_ids[0], "content": "agent spawned"}
        else:
            blocks = sent["messages"][-2]["content"]
            assert blocks[0] == {"type": "thinking", "thinking": "Spawn one.", "signature": "upstream-sig"}
            assert blocks[1] == {"type": "text", "text": "On it."}
            assert blocks[2]["type"] == "tool_use" and blocks[2]["name"] == "multi_agent_v1__spawn_agent"
            assert sent["messages"][-1]["content"][0] == {"type": "tool_result", "tool_use_id": output_ids[0],
                                                          "content": "agent spawned"}

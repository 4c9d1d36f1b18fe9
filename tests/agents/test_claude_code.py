"""The real Claude Code CLI (``claude -p``) through the gateway, against both upstream protocols.

The fake upstream serves exactly the replies each run consumes (queued in order), and
every assertion is made both on what the CLI printed and on what the upstream received.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agents.cli import MODEL, KeyFor, binary, claude
from tests.conftest import Gateway
from tests.fakes.upstream import DEFAULT_USAGE, FakeUpstream, anthropic_text_stream, openai_chunk, openai_text_stream

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

REASONING = "The user wants notes.txt; I should read it with the Read tool first."
FILE_TEXT = "hello from file"
FINAL = "The file notes.txt says: hello from file."
BETA_FIELDS = ("context_management", "container", "mcp_servers", "service_tier", "output_config", "betas",
               "anthropic_beta", "thinking", "metadata")


@pytest.fixture(autouse=True)
def _needs_claude() -> None:
    binary("claude")


def _workdir(tmp_path: Path) -> tuple[Path, Path]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    (cwd / "notes.txt").write_text(FILE_TEXT + "\n")
    return cwd, home


def _posts(fake: FakeUpstream, path: str) -> list[Any]:
    return [r.body for r in fake.requests if r.path == path]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


# ------------------------------------------------------------------ OpenAI-protocol upstream
@pytest.mark.parametrize("auth", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
def test_plain_answer_openai_upstream(oup: Gateway, fake: FakeUpstream, tmp_path: Path, auth: str,
                                      agent_key: KeyFor) -> None:
    key = agent_key(oup, "claude")
    fake.queue_sse(openai_text_stream("hi there from the fake", MODEL))
    cwd, home = _workdir(tmp_path)
    r = claude(oup, key, "say hi", cwd=cwd, home=home, auth=auth)
    assert r.returncode == 0, r.explain()
    assert "hi there from the fake" in r.stdout
    bodies = _posts(fake, "/v1/chat/completions")
    assert len(bodies) == 1, [json.dumps(b)[:300] for b in bodies]
    up = bodies[0]
    assert up["model"] == MODEL and up["stream"] is True and up["max_tokens"] == 32000
    # beta and Anthropic-only fields never reach an OpenAI upstream
    assert not any(f in up for f in BETA_FIELDS), sorted(up)
    msgs = up["messages"]
    # Claude Code's 3 system blocks become one leading system message, without its billing line.
    assert msgs[0]["role"] == "system" and "Claude Agent SDK" in _text(msgs[0]["content"])
    assert "x-anthropic-billing-header" not in json.dumps(up)
    assert [m["role"] for m in msgs[1:]] == ["user"]
    # The trailing role:"system" message (agent types) is placed after the prompt, in the last user turn.
    last = _text(msgs[-1]["content"])
    assert "say hi" in last and "Available agent types" in last
    assert last.index("say hi") < last.index("Available agent types")
    # Claude Code's tools arrive as OpenAI functions with their JSON schemas.
    names = {t["function"]["name"] for t in up["tools"]}
    assert {"Read", "Bash", "Edit", "Write"} <= names
    read = next(t for t in up["tools"] if t["function"]["name"] == "Read")
    assert read["type"] == "function" and "file_path" in read["function"]["parameters"]["properties"]
    assert fake.requests[0].headers.get("Authorization") == "Bearer upstream-secret"


def _openai_tool_call_stream(path: Path) -> list[Any]:
    """Reasoning, then a Read call whose arguments arrive split across two deltas."""
    args = json.dumps({"file_path": str(path)})
    cut = len(args) // 2
    return [
        openai_chunk({"role": "assistant", "content": ""}, model=MODEL),
        openai_chunk({"reasoning_content": REASONING[:20]}, model=MODEL),
        openai_chunk({"reasoning_content": REASONING[20:]}, model=MODEL),
        openai_chunk({"tool_calls": [{"index": 0, "id": "call_read_1", "type": "function",
                                      "function": {"name": "Read", "arguments": args[:cut]}}]}, model=MODEL),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[cut:]}}]}, model=MODEL),
        openai_chunk({}, "tool_calls", model=MODEL),
        {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
         "usage": DEFAULT_USAGE},
        "[DONE]",
    ]


def test_tool_round_trip_openai_upstream(oup: Gateway, fake: FakeUpstream, tmp_path: Path,
                                         agent_key: KeyFor) -> None:
    key = agent_key(oup, "claude")
    cwd, home = _workdir(tmp_path)
    target = cwd / "notes.txt"
    fake.queue_sse(_openai_tool_call_stream(target))
    fake.queue_sse(openai_text_stream(FINAL, MODEL))
    r = claude(oup, key, "What does notes.txt say?", cwd=cwd, home=home, args=("--allowedTools", "Read"))
    assert r.returncode == 0, r.explain()
    assert FINAL in r.stdout
    bodies = _posts(fake, "/v1/chat/completions")
    assert len(bodies) == 2, [json.dumps(b)[:300] for b in bodies]
    msgs = bodies[1]["messages"]
    calls = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
    assert len(calls) == 1
    call = calls[0]
    assert call["reasoning_content"] == REASONING  # replayed from Claude Code's echoed, signed thinking block
    [tc] = call["tool_calls"]
    assert tc["id"] == "call_read_1" and tc["function"]["name"] == "Read"
    assert json.loads(tc["function"]["arguments"]) == {"file_path": str(target)}
    results = [m for m in msgs if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_read_1"]
    assert FILE_TEXT in _text(results[0]["content"])
    assert msgs.index(results[0]) == msgs.index(call) + 1  # the tool reply directly follows the call


# ------------------------------------------------------------------ Anthropic-protocol upstream
def _anthropic_tool_use_stream(path: Path) -> list[Any]:
    args = json.dumps({"file_path": str(path)})
    cut = len(args) // 2

    def ev(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, **data}

    return [
        ev("message_start", message={"id": "msg_up1", "type": "message", "role": "assistant", "model": MODEL,
                                     "content": [], "stop_reason": None, "stop_sequence": None,
                                     "usage": {"input_tokens": 40, "output_tokens": 1}}),
        ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": REASONING[:20]}),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": REASONING[20:]}),
        ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "upstream-sig-42"}),
        ev("content_block_stop", index=0),
        ev("content_block_start", index=1, content_block={"type": "tool_use", "id": "toolu_read_1", "name": "Read",
                                                          "input": {}}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": args[:cut]}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": args[cut:]}),
        ev("content_block_stop", index=1),
        ev("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 30}),
        ev("message_stop"),
    ]


def test_plain_answer_anthropic_upstream(aup: Gateway, fake: FakeUpstream, tmp_path: Path,
                                         agent_key: KeyFor) -> None:
    key = agent_key(aup, "claude")
    fake.queue_sse(anthropic_text_stream("hi there from the anthropic fake", MODEL))
    cwd, home = _workdir(tmp_path)
    r = claude(aup, key, "say hi", cwd=cwd, home=home)
    assert r.returncode == 0, r.explain()
    assert "hi there from the anthropic fake" in r.stdout
    bodies = _posts(fake, "/v1/messages")
    assert len(bodies) == 1 and not _posts(fake, "/v1/chat/completions")
    up = bodies[0]
    assert up["model"] == MODEL and up["stream"] is True
    for beta in ("context_management", "container", "mcp_servers", "service_tier"):
        assert beta not in up
    assert "anthropic-beta" not in {k.lower() for k in fake.requests[0].headers}
    assert "x-anthropic-billing-header" not in json.dumps(up)
    assert "Claude Agent SDK" in json.dumps(up.get("system"))
    assert {"Read", "Bash"} <= {t["name"] for t in up["tools"]}
    # the trailing system message is not sent as a role:"system" turn (the Messages API has none)
    assert all(m["role"] in ("user", "assistant") for m in up["messages"])
    assert "Available agent types" in json.dumps(up["messages"][-1])


def test_tool_round_trip_anthropic_upstream(aup: Gateway, fake: FakeUpstream, tmp_path: Path,
                                            agent_key: KeyFor) -> None:
    key = agent_key(aup, "claude")
    cwd, home = _workdir(tmp_path)
    target = cwd / "notes.txt"
    fake.queue_sse(_anthropic_tool_use_stream(target))
    fake.queue_sse(anthropic_text_stream(FINAL, MODEL))
    r = claude(aup, key, "What does notes.txt say?", cwd=cwd, home=home, args=("--allowedTools", "Read"))
    assert r.returncode == 0, r.explain()
    assert FINAL in r.stdout
    bodies = _posts(fake, "/v1/messages")
    assert len(bodies) == 2, [json.dumps(b)[:300] for b in bodies]
    msgs = bodies[1]["messages"]
    turn = next(m for m in msgs if m["role"] == "assistant"
                and any(b.get("type") == "tool_use" for b in m["content"]))
    kinds = [b["type"] for b in turn["content"]]
    assert kinds == ["thinking", "tool_use"], kinds
    thinking, tool_use = turn["content"]
    # the echoed thinking goes back to the upstream with the upstream's own signature
    assert thinking["thinking"] == REASONING and thinking["signature"] == "upstream-sig-42"
    assert tool_use["id"] == "toolu_read_1" and tool_use["name"] == "Read"
    assert tool_use["input"] == {"file_path": str(target)}
    reply = msgs[msgs.index(turn) + 1]
    assert reply["role"] == "user"
    results = [b for b in reply["content"] if b.get("type") == "tool_result"]
    assert [b["tool_use_id"] for b in results] == ["toolu_read_1"]
    assert FILE_TEXT in json.dumps(results[0]["content"])

"""The real Codex CLI 0.169.0 (``codex exec``) through the gateway's Responses API, with the model served
by a fake upstream of either protocol: a plain answer, a shell-tool round trip (the second upstream request
carries the tool output and the replayed reasoning), and a second turn in the same thread
(``codex exec resume --last``) that replays the earlier reasoning exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agents.cli import MODEL, KeyFor, Run, base_env, binary, run
from tests.anthropic.wire import anthropic_stream, openai_tool_stream
from tests.conftest import Gateway
from tests.fakes.upstream import DEFAULT_TEXT, FakeUpstream, anthropic_text_stream, openai_text_stream

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

REASONING = "The user asks about notes.txt; read it with the shell first."
FILE_TEXT = "hello from file"
FINAL = "notes.txt says: hello from file"
SECOND = "It is one line long."
READ_CALL = ["{\"cmd\": \"cat ", "notes.txt\"}"]


@pytest.fixture(autouse=True)
def _needs_codex() -> None:
    binary("codex")


def codex(gw: Gateway, key: str, *args: str, cwd: Path, home: Path, sandbox: bool = False) -> Run:
    """``codex exec …`` with a provider that points at the gateway (``wire_api = "responses"``); without
    ``sandbox`` Codex runs its shell tool unsandboxed (and then allows live web access)."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(f"""
model = "{MODEL}"
model_provider = "stepplan"

[model_providers.stepplan]
name = "Step Plan"
base_url = "{gw.openai_base}"
env_key = "STEPPLAN_API_KEY"
wire_api = "responses"
""")
    env = base_env(home, STEPPLAN_API_KEY=key)
    flags = [] if sandbox else ["--dangerously-bypass-approvals-and-sandbox"]
    return run([binary("codex"), "exec", "--skip-git-repo-check", *flags, *args], cwd=cwd, env=env)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    (cwd / "notes.txt").write_text(FILE_TEXT + "\n")
    return cwd, home


def _bodies(fake: FakeUpstream, path: str) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.path == path]


def test_codex_exec_answers_a_prompt(oup: Gateway, agent_key: KeyFor, fake: FakeUpstream, tmp_path: Path) -> None:
    cwd, home = _dirs(tmp_path)
    r = codex(oup, agent_key(oup, "codex"), "say hi", cwd=cwd, home=home, sandbox=True)
    assert r.returncode == 0, r.explain()
    assert DEFAULT_TEXT in r.stdout, r.explain()
    (body,) = _bodies(fake, "/v1/chat/completions")
    assert body["model"] == MODEL and body["stream"] is True
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith("You are a coding agent running in the Codex CLI")
    assert body["messages"][-1]["role"] == "user" and "say hi" in json.dumps(body["messages"][-1])
    functions = [t["function"]["name"] for t in body["tools"] if t["type"] == "function"]
    assert "exec_command" in functions and "multi_agent_v1__spawn_agent" in functions
    # In its read-only sandbox Codex forbids live web access: its web_search tool is dropped.
    assert all(t["type"] == "function" for t in body["tools"])


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_codex_runs_a_tool_and_replays_reasoning(upstream: str, oup: Gateway, aup: Gateway, agent_key: KeyFor,
                                                 fake: FakeUpstream, tmp_path: Path) -> None:
    gw = oup if upstream == "openai" else aup
    path = "/v1/chat/completions" if upstream == "openai" else "/v1/messages"
    if upstream == "openai":
        fake.queue_sse(openai_tool_stream([("call_read", "exec_command", READ_CALL)], reasoning=REASONING))
        fake.queue_sse(openai_text_stream(FINAL))
        fake.queue_sse(openai_text_stream(SECOND))
    else:
        fake.queue_sse(anthropic_stream(thinking=REASONING, tools=[("toolu_read", "exec_command", READ_CALL)]))
        fake.queue_sse(anthropic_text_stream(FINAL))
        fake.queue_sse(anthropic_text_stream(SECOND))
    cwd, home = _dirs(tmp_path)
    key = agent_key(gw, f"codex-{upstream}")
    r = codex(gw, key, "what is in notes.txt?", cwd=cwd, home=home)
    assert r.returncode == 0, r.explain()
    assert FINAL in r.stdout, r.explain()
    first, second = _bodies(fake, path)
    # Unsandboxed, Codex allows live web access: step-3.5-flash on an OpenAI-protocol upstream can run
    # StepFun's built-in web search, so it is forwarded in that shape; an Anthropic upstream cannot.
    searches = [t for t in first["tools"] if t.get("type") == "web_search"]
    assert searches == ([{"type": "web_search", "function": {"description": ""}}] if upstream == "openai" else [])
    if upstream == "openai":
        assistant, tool = second["messages"][-2], second["messages"][-1]
        assert assistant["reasoning_content"] == REASONING
        assert assistant["tool_calls"][0]["id"] == "call_read"
        assert assistant["tool_calls"][0]["function"]["name"] == "exec_command"
        assert tool["role"] == "tool" and tool["tool_call_id"] == "call_read" and FILE_TEXT in tool["content"]
    else:
        assistant, results = second["messages"][-2], second["messages"][-1]
        assert assistant["content"][0] == {"type": "thinking", "thinking": REASONING, "signature": "upstream-sig"}
        assert assistant["content"][1]["type"] == "tool_use" and assistant["content"][1]["id"] == "toolu_read"
        result = results["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_read"
        assert FILE_TEXT in json.dumps(result["content"])

    # A second turn in the same thread: the whole history again, the earlier reasoning replayed exactly.
    r = codex(gw, key, "resume", "--last", "how long is it?", cwd=cwd, home=home)
    assert r.returncode == 0, r.explain()
    assert SECOND in r.stdout, r.explain()
    third = _bodies(fake, path)[2]
    if upstream == "openai":
        turns = [m for m in third["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
        assert [m["reasoning_content"] for m in turns] == [REASONING]
        assert "how long is it?" in json.dumps(third["messages"][-1])
    else:
        thinking = [b for m in third["messages"] if m["role"] == "assistant" for b in m["content"]
                    if b["type"] == "thinking"]
        assert thinking == [{"type": "thinking", "thinking": REASONING, "signature": "upstream-sig"}]

"""The real OpenCode CLI (``opencode run``) through the gateway, with both of its providers.

Provider ``gw`` is ``@ai-sdk/openai-compatible`` (→ ``/step_plan/v1/chat/completions``),
``gwa`` is ``@ai-sdk/anthropic`` (→ ``/step_plan/v1/messages``); each gets a key of its
own account so the gateway's call log shows which one served a request. A run without
``--title`` first makes a title request (small_model, always ``gw``, no tools); the
plain runs let the fake's default reply serve both, the tool round trips pass
``--title`` so the fake serves exactly the replies queued for them, in order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agents.cli import MODEL, KeyFor, Run, binary, opencode
from tests.conftest import Gateway
from tests.fakes.upstream import DEFAULT_TEXT, DEFAULT_USAGE, FakeUpstream, openai_chunk, openai_text_stream

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

REASONING = "The user asks about notes.txt; read it first."
FILE_TEXT = "hello from file"
FINAL = "notes.txt contains: hello from file"
CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _needs_opencode() -> None:
    binary("opencode")


OC_OPENAI, OC_ANTHROPIC = "oc-openai", "oc-anthropic"  # the accounts behind providers gw and gwa


def _served(gw: Gateway, account: str) -> int:
    return sum(1 for line in gw.log_text().splitlines() if "stepplan.call" in line and f"account={account} " in line)


class Calls:
    """Calls the gateway logs per provider account during a run (its log is written in
    batches, off the request path, so :meth:`since` waits for the expected count)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.before = {a: _served(gw, a) for a in (OC_OPENAI, OC_ANTHROPIC)}

    def since(self, *, openai: int, anthropic: int, timeout: float = 10) -> tuple[int, int]:
        deadline = time.time() + timeout
        while True:
            got = (_served(self.gw, OC_OPENAI) - self.before[OC_OPENAI],
                   _served(self.gw, OC_ANTHROPIC) - self.before[OC_ANTHROPIC])
            if (got[0] >= openai and got[1] >= anthropic) or time.time() > deadline:
                return got
            time.sleep(0.2)


def _run(gw: Gateway, agent_key: KeyFor, message: str, tmp_path: Path, *args: str) -> tuple[Run, Calls]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    (cwd / "notes.txt").write_text(FILE_TEXT + "\n")
    ko, ka = agent_key(gw, OC_OPENAI), agent_key(gw, OC_ANTHROPIC)
    calls = Calls(gw)
    return opencode(gw, ko, ka, message, cwd=cwd, home=home, args=args), calls


def _output(r: Run) -> str:
    return r.stdout + r.stderr


def _check_title_and_main(fake: FakeUpstream) -> dict[str, Any]:
    bodies = [r.body for r in fake.requests if r.path == CHAT]
    assert len(bodies) == 2, [json.dumps(b)[:300] for b in bodies]
    titles = [b for b in bodies if not b.get("tools")]
    mains = [b for b in bodies if b.get("tools")]
    assert len(titles) == 1 and len(mains) == 1
    assert "reasoning_effort" not in titles[0]  # step-3.5-flash has no effort levels: dropped, not an error
    main = mains[0]
    names = {t["function"]["name"] for t in main["tools"]}
    assert {"bash", "read", "edit", "write", "glob", "grep"} <= names
    read = next(t for t in main["tools"] if t["function"]["name"] == "read")
    assert "filePath" in read["function"]["parameters"]["properties"]
    assert main["model"] == MODEL and main["stream"] is True
    assert "say hi" in json.dumps(main["messages"][-1])
    return main


# ------------------------------------------------------------------ plain answers
def test_plain_answer_openai_provider(oup: Gateway, fake: FakeUpstream, tmp_path: Path, agent_key: KeyFor) -> None:
    r, calls = _run(oup, agent_key, "say hi", tmp_path)
    assert r.returncode == 0, r.explain()
    assert DEFAULT_TEXT in _output(r)
    main = _check_title_and_main(fake)
    assert main["tool_choice"] == "auto"
    assert calls.since(openai=2, anthropic=0) == (2, 0)


def test_plain_answer_anthropic_provider(oup: Gateway, fake: FakeUpstream, tmp_path: Path,
                                         agent_key: KeyFor) -> None:
    r, calls = _run(oup, agent_key, "say hi", tmp_path, "-m", f"gwa/{MODEL}")
    assert r.returncode == 0, r.explain()
    assert DEFAULT_TEXT in _output(r)
    main = _check_title_and_main(fake)
    assert main["tool_choice"] == "auto"  # Anthropic {"type": "auto"} translated
    # the title call came through chat/completions (small_model is gw), the main one through /messages
    assert calls.since(openai=1, anthropic=1) == (1, 1)


def test_plain_answer_anthropic_provider_anthropic_upstream(aup: Gateway, fake: FakeUpstream, tmp_path: Path,
                                                            agent_key: KeyFor) -> None:
    r, calls = _run(aup, agent_key, "say hi", tmp_path, "-m", f"gwa/{MODEL}", "--title", "hi")
    assert r.returncode == 0, r.explain()
    assert DEFAULT_TEXT in _output(r)
    bodies = [q.body for q in fake.requests]
    assert [q.path for q in fake.requests] == ["/v1/messages"], [json.dumps(b)[:300] for b in bodies]
    assert bodies[0]["tool_choice"] == {"type": "auto"}
    assert "read" in {t["name"] for t in bodies[0]["tools"]}
    assert calls.since(openai=0, anthropic=1) == (0, 1)


# ------------------------------------------------------------------ tool round trips
def _read_call_stream(path: Path) -> list[Any]:
    args = json.dumps({"filePath": str(path)})
    cut = len(args) // 2
    return [
        openai_chunk({"role": "assistant", "content": ""}, model=MODEL),
        openai_chunk({"reasoning_content": REASONING}, model=MODEL),
        openai_chunk({"tool_calls": [{"index": 0, "id": "call_read_7", "type": "function",
                                      "function": {"name": "read", "arguments": args[:cut]}}]}, model=MODEL),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[cut:]}}]}, model=MODEL),
        openai_chunk({}, "tool_calls", model=MODEL),
        {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
         "usage": DEFAULT_USAGE},
        "[DONE]",
    ]


@pytest.mark.parametrize("provider", ["gw", "gwa"])
def test_tool_round_trip(oup: Gateway, fake: FakeUpstream, tmp_path: Path, agent_key: KeyFor,
                         provider: str) -> None:
    target = tmp_path / "work" / "notes.txt"
    fake.queue_sse(_read_call_stream(target))
    fake.queue_sse(openai_text_stream(FINAL, MODEL))
    r, calls = _run(oup, agent_key, "What does notes.txt say?", tmp_path, "-m", f"{provider}/{MODEL}",
                    "--title", "notes")
    assert r.returncode == 0, r.explain()
    assert FINAL in _output(r)
    bodies = [r.body for r in fake.requests if r.path == CHAT]
    assert len(bodies) == 2, [json.dumps(b)[:300] for b in bodies]
    msgs = bodies[1]["messages"]
    turns = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
    assert len(turns) == 1
    call = turns[0]
    # OpenAI provider: OpenCode echoes reasoning_content; Anthropic provider: restored from the signed thinking block.
    assert call["reasoning_content"] == REASONING
    [tc] = call["tool_calls"]
    assert tc["id"] == "call_read_7" and tc["function"]["name"] == "read"
    assert json.loads(tc["function"]["arguments"]) == {"filePath": str(target)}
    reply = msgs[msgs.index(call) + 1]
    assert reply["role"] == "tool" and reply["tool_call_id"] == "call_read_7"
    assert FILE_TEXT in json.dumps(reply["content"])
    expected = (2, 0) if provider == "gw" else (0, 2)
    assert calls.since(openai=expected[0], anthropic=expected[1]) == expected

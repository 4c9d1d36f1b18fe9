"""OpenCode with the stock ``@ai-sdk/openai`` provider (which always speaks the Responses API, like Kilo's)
through the gateway: a plain answer and a file-reading tool round trip whose second upstream request
carries the tool output and the reasoning; the ledger shows the calls came in as ``responses``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agents.cli import MODEL, OPENCODE_QUIET, Run, base_env, binary, run
from tests.anthropic.wire import openai_tool_stream
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import DEFAULT_TEXT, FakeUpstream, openai_text_stream

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

ADMIN = "admin-for-the-responses-agent-tests"
REASONING = "Read notes.txt before answering."
FILE_TEXT = "hello from file"
FINAL = "notes.txt contains: hello from file"


@pytest.fixture(autouse=True)
def _needs_opencode() -> None:
    binary("opencode")


@pytest.fixture(scope="module")
def rgw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("agents-responses"), fake, env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    gw.start()
    yield gw
    gw.stop()


def opencode_responses(gw: Gateway, key: str, message: str, *, cwd: Path, home: Path) -> Run:
    model = {"name": MODEL, "tool_call": True, "reasoning": True, "limit": {"context": 128000, "output": 8192}}
    cfg = {"$schema": "https://opencode.ai/config.json",
           "provider": {"gwr": {"npm": "@ai-sdk/openai", "name": "Gateway (Responses)",
                                "options": {"baseURL": gw.openai_base, "apiKey": key}, "models": {MODEL: model}}},
           "model": f"gwr/{MODEL}", "small_model": f"gwr/{MODEL}", "autoupdate": False, "share": "disabled"}
    (cwd / "opencode.json").write_text(json.dumps(cfg, indent=2))
    return run([binary("opencode"), "run", "--title", "t", message], cwd=cwd, env=base_env(home, **OPENCODE_QUIET))


def _protocols(gw: Gateway, account: str) -> list[str]:
    r = httpx.get(f"{gw.url}/admin/v1/ledger/entries", params={"account": account},
                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [e["protocol"] for e in r.json()["data"]]


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    (cwd / "notes.txt").write_text(FILE_TEXT + "\n")
    return cwd, home


def test_plain_answer(rgw: Gateway, fake: FakeUpstream, tmp_path: Path) -> None:
    cwd, home = _dirs(tmp_path)
    r = opencode_responses(rgw, rgw.new_key("oc-responses"), "say hi", cwd=cwd, home=home)
    assert r.returncode == 0, r.explain()
    assert DEFAULT_TEXT in r.stdout + r.stderr
    (body,) = [q.body for q in fake.requests]
    assert body["stream"] is True and "say hi" in json.dumps(body["messages"][-1])
    assert "read" in {t["function"]["name"] for t in body["tools"]}
    assert _protocols(rgw, "oc-responses") == ["responses"]


def test_tool_round_trip(rgw: Gateway, fake: FakeUpstream, tmp_path: Path) -> None:
    cwd, home = _dirs(tmp_path)
    args = json.dumps({"filePath": str(cwd / "notes.txt")})
    fake.queue_sse(openai_tool_stream([("call_read_9", "read", [args[:10], args[10:]])], reasoning=REASONING))
    fake.queue_sse(openai_text_stream(FINAL, MODEL))
    r = opencode_responses(rgw, rgw.new_key("oc-responses-tools"), "What does notes.txt say?", cwd=cwd, home=home)
    assert r.returncode == 0, r.explain()
    assert FINAL in r.stdout + r.stderr
    _, second = [q.body for q in fake.requests]
    msgs = second["messages"]
    [call] = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
    assert call["reasoning_content"] == REASONING
    assert call["tool_calls"][0]["id"] == "call_read_9" and call["tool_calls"][0]["function"]["name"] == "read"
    reply = msgs[msgs.index(call) + 1]
    assert reply["role"] == "tool" and reply["tool_call_id"] == "call_read_9" and FILE_TEXT in reply["content"]
    assert _protocols(rgw, "oc-responses-tools") == ["responses", "responses"]

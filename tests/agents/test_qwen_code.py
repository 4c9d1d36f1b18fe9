"""Qwen Code (``qwen "…"``, one-shot) through the gateway with ``--auth-type openai``
(→ ``/step_plan/v1/chat/completions``) and ``--auth-type anthropic`` (→ ``/step_plan/v1/messages``),
both configured in ``~/.qwen/settings.json`` under ``modelProviders``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.agents.cli import base_env, binary
from tests.agents.matrix import (
    FINAL,
    HI,
    MODEL,
    ROUND_TRIP,
    SAY_HI,
    AgentRun,
    AgentRunFactory,
    Script,
    text_reply,
    tool_names,
    tool_reply,
)

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

AGENT = "Qwen Code"
TOOL = "read_file"  # {"file_path": ...}


def settings(openai_base: str, anthropic_base: str) -> dict[str, Any]:
    """``~/.qwen/settings.json``; the key is read from ``STEPPLAN_API_KEY``."""
    return {
        "modelProviders": {
            "openai": [{"id": MODEL, "name": MODEL, "baseUrl": openai_base, "envKey": "STEPPLAN_API_KEY"}],
            "anthropic": [{"id": MODEL, "name": MODEL, "baseUrl": anthropic_base, "envKey": "STEPPLAN_API_KEY"}],
        },
        "security": {"auth": {"selectedType": "openai"}},
        "model": {"name": MODEL},
        "general": {"enableAutoUpdate": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "memory": {"enableManagedAutoMemory": False},  # no background memory-extraction call after the turn
        "ui": {"enableFollowupSuggestions": False},
    }


@pytest.fixture(autouse=True)
def _needs_qwen() -> None:
    binary("qwen")


def qwen(r: AgentRun, prompt: str) -> str:
    (r.home / ".qwen").mkdir(exist_ok=True)
    (r.home / ".qwen" / "settings.json").write_text(json.dumps(settings(r.openai_base, r.anthropic_base), indent=2))
    env = base_env(r.home, STEPPLAN_API_KEY=r.key)
    r.execute([binary("qwen"), "--auth-type", r.protocol, "-m", MODEL, prompt], env)
    return r.run.stdout


@pytest.mark.parametrize(("protocol", "gateway"), SAY_HI)
def test_say_hi(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(HI))
    r.check_finished(HI, qwen(r, "say hi"))
    assert len(r.upstream_posts) == 1, r.why("one turn, one upstream call")
    body = r.main_request(script)
    assert body["model"] == MODEL and body["stream"] is True, r.why()
    assert {TOOL, "glob", "grep_search"} <= tool_names(body), r.why(f"tools {sorted(tool_names(body))}")
    assert "say hi" in json.dumps(body["messages"][-1]), r.why()


@pytest.mark.parametrize(("protocol", "gateway"), ROUND_TRIP)
def test_tool_round_trip(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, tool_reply(TOOL, {"file_path": str(r.file)}), text_reply(FINAL))
    r.check_finished(FINAL, qwen(r, "What does notes.txt say?"))
    r.tool_round_trip(script, TOOL, {"file_path": str(r.file)})

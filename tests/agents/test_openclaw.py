"""OpenClaw (``openclaw agent --local``) through the gateway: its built-in ``stepfun-plan``
provider (OpenAI Chat Completions) with ``baseUrl`` pointed at the gateway, and a custom
provider with ``api: "anthropic-messages"``. Reasoning effort is exercised: the Step models
are declared with ``compat.supportsReasoningEffort`` and runs pass ``--thinking``.
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

AGENT = "OpenClaw"
TOOL = "read"  # OpenClaw's file-read tool: {"path": ...}
PROVIDERS = {"openai": "stepfun-plan", "anthropic": "stepplan-anthropic"}
REASONING_MODEL = "step-3.7-flash"  # low / medium / high


def _model(model_id: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "name": name, "reasoning": True, "input": ["text"], "contextWindow": 262144,
            "maxTokens": 65536, "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}, **extra}


def config(openai_base: str, anthropic_base: str, workspace: str) -> dict[str, Any]:
    """``~/.openclaw/openclaw.json`` (docs/agents.md shows it; the key comes from the environment)."""
    effort = {"compat": {"supportsReasoningEffort": True}}
    return {
        "update": {"checkOnStart": False},
        "models": {"mode": "merge", "providers": {
            "stepfun-plan": {  # built in: only the base URL (and effort support) changes
                "baseUrl": openai_base,
                "models": [_model("step-3.5-flash", "Step 3.5 Flash", **effort),
                           _model("step-3.5-flash-2603", "Step 3.5 Flash 2603", **effort),
                           _model("step-3.7-flash", "Step 3.7 Flash", **effort)],
            },
            "stepplan-anthropic": {
                "baseUrl": anthropic_base, "api": "anthropic-messages", "apiKey": "${STEPPLAN_API_KEY}",
                "models": [_model("step-3.5-flash", "Step 3.5 Flash"), _model("step-3.7-flash", "Step 3.7 Flash")],
            },
        }},
        "agents": {"defaults": {"model": {"primary": "stepfun-plan/step-3.5-flash"}, "workspace": workspace}},
    }


@pytest.fixture(autouse=True)
def _needs_openclaw() -> None:
    binary("openclaw")


def openclaw(r: AgentRun, message: str, *, model: str = MODEL, thinking: str = "low") -> str:
    """One ``openclaw agent --local --json`` turn; returns the reply text it printed."""
    (r.home / ".openclaw").mkdir(exist_ok=True)
    (r.home / ".openclaw" / "openclaw.json").write_text(
        json.dumps(config(r.openai_base, r.anthropic_base, str(r.cwd)), indent=2))
    env = base_env(r.home, STEPFUN_API_KEY=r.key, STEPPLAN_API_KEY=r.key)
    r.execute([binary("openclaw"), "agent", "--local", "--agent", "main", "--json", "--timeout", "150",
               "--model", f"{PROVIDERS[r.protocol]}/{model}", "--thinking", thinking, "-m", message], env)
    try:
        r.said = "\n".join(p.get("text") or "" for p in json.loads(r.run.stdout).get("payloads", []))
    except (json.JSONDecodeError, AttributeError):
        return r.run.stdout
    return r.said




# ------------------------------------------------------------------ the matrix
@pytest.mark.parametrize(("protocol", "gateway"), SAY_HI)
def test_say_hi(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(HI))
    said = openclaw(r, "say hi")
    r.check_finished(HI, said)
    body = r.main_request(script)
    assert len(r.upstream_posts) == 1, r.why("one turn, one upstream call")
    assert body["model"] == MODEL and body["stream"] is True, r.why()
    assert {TOOL, "write", "edit", "exec"} <= tool_names(body), r.why(f"tools {sorted(tool_names(body))}")
    assert "say hi" in json.dumps(body["messages"][-1]), r.why()


@pytest.mark.parametrize(("protocol", "gateway"), ROUND_TRIP)
def test_tool_round_trip(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, tool_reply(TOOL, {"path": str(r.file)}), text_reply(FINAL))
    said = openclaw(r, "What does notes.txt say?")
    r.check_finished(FINAL, said)
    r.tool_round_trip(script, TOOL, {"path": str(r.file)})


# ------------------------------------------------------------------ reasoning effort
def test_effort_reaches_the_upstream(agent_run: AgentRunFactory) -> None:
    """``--thinking medium`` on a model with low/medium/high: ``reasoning_effort`` arrives as is."""
    r = agent_run(AGENT, "openai")
    script = Script(r.fake, text_reply(HI))
    said = openclaw(r, "say hi", model=REASONING_MODEL, thinking="medium")
    r.check_finished(HI, said)
    assert r.agent_posts()[-1].body.get("reasoning_effort") == "medium", r.why()
    assert r.main_request(script).get("reasoning_effort") == "medium", r.why()


def test_effort_is_mapped_to_a_level_the_model_has(agent_run: AgentRunFactory) -> None:
    """step-3.5-flash-2603 has only low and high: OpenClaw's ``medium`` is mapped, not refused (400)."""
    r = agent_run(AGENT, "openai")
    script = Script(r.fake, text_reply(HI))
    said = openclaw(r, "say hi", model="step-3.5-flash-2603", thinking="medium")
    r.check_finished(HI, said)
    assert r.agent_posts()[-1].body.get("reasoning_effort") == "medium", r.why()
    used = r.agent_posts()[-1].response_headers.get("x-stepplan-effort")
    assert used in ("low", "high"), r.why(f"x-stepplan-effort {used!r}")
    assert r.main_request(script).get("reasoning_effort") == used, r.why()


def test_anthropic_thinking_becomes_an_effort(agent_run: AgentRunFactory) -> None:
    """The Anthropic provider sends ``thinking: {type: enabled, budget_tokens}`` for a thinking
    level; on an OpenAI-protocol upstream it becomes one of the model's effort levels."""
    r = agent_run(AGENT, "anthropic")
    script = Script(r.fake, text_reply(HI))
    said = openclaw(r, "say hi", model=REASONING_MODEL, thinking="medium")
    r.check_finished(HI, said)
    thinking = r.agent_posts()[-1].body.get("thinking") or {}
    assert thinking.get("type") == "enabled" and thinking.get("budget_tokens"), r.why(f"thinking {thinking}")
    used = r.agent_posts()[-1].response_headers.get("x-stepplan-effort")
    assert used in ("low", "medium", "high"), r.why(f"x-stepplan-effort {used!r}")
    assert r.main_request(script).get("reasoning_effort") == used, r.why()

"""Kilo CLI (``kilo run``) through the gateway with two providers in the project's ``kilo.json``:
``stepplan`` (``@ai-sdk/openai-compatible`` → ``/step_plan/v1/chat/completions``) and
``stepplan-anthropic`` (``@ai-sdk/anthropic`` → ``/step_plan/v1/messages``). Both SDK providers are
bundled in the binary: nothing is downloaded.
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

AGENT = "Kilo"
TOOL = "read"  # {"filePath": ...}
PROVIDERS = {"openai": "stepplan", "anthropic": "stepplan-anthropic"}

# What keeps Kilo off the network except for the gateway (the names are in its binary).
KILO_QUIET = {
    "KILO_TELEMETRY_LEVEL": "off",
    "KILO_DISABLE_AUTOUPDATE": "1",
    "KILO_DISABLE_MODELS_FETCH": "1",
    "KILO_DISABLE_LSP_DOWNLOAD": "1",
    "KILO_DISABLE_SHARE": "1",
    "KILO_DISABLE_SESSION_INGEST": "1",
    "KILO_DISABLE_DEFAULT_PLUGINS": "1",
}


def config(openai_base: str, key: str) -> dict[str, Any]:
    """The project's ``kilo.json``. ``@ai-sdk/anthropic`` appends ``/messages`` to its baseURL,
    so both providers take the gateway's ``/step_plan/v1``. The key is written in: Kilo 7.7.7
    rejects the whole file (``ConfigInvalidError``) when ``apiKey`` is ``{env:…}``."""
    model = {"name": MODEL, "tool_call": True, "reasoning": True, "limit": {"context": 262144, "output": 65536}}
    return {
        "$schema": "https://app.kilo.ai/config.json",
        "provider": {
            "stepplan": {"npm": "@ai-sdk/openai-compatible", "name": "stepplan",
                         "options": {"baseURL": openai_base, "apiKey": key}, "models": {MODEL: model}},
            "stepplan-anthropic": {"npm": "@ai-sdk/anthropic", "name": "stepplan (Anthropic protocol)",
                                   "options": {"baseURL": openai_base, "apiKey": key}, "models": {MODEL: model}},
        },
        "model": f"stepplan/{MODEL}", "small_model": f"stepplan/{MODEL}", "autoupdate": False, "share": "disabled",
    }


@pytest.fixture(autouse=True)
def _needs_kilo() -> None:
    binary("kilo")


def kilo(r: AgentRun, message: str) -> str:
    (r.cwd / "kilo.json").write_text(json.dumps(config(r.openai_base, r.key), indent=2))
    return r.execute([binary("kilo"), "run", "-m", f"{PROVIDERS[r.protocol]}/{MODEL}", message],
                     base_env(r.home, **KILO_QUIET)).stdout


@pytest.mark.parametrize(("protocol", "gateway"), SAY_HI)
def test_say_hi(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(HI))
    r.check_finished(HI, kilo(r, "say hi"))
    assert len(r.upstream_posts) == 1, r.why("one turn, one upstream call")
    body = r.main_request(script)
    assert body["model"] == MODEL and body["stream"] is True, r.why()
    assert {TOOL, "bash", "edit", "write", "glob", "grep"} <= tool_names(body), r.why(f"{sorted(tool_names(body))}")
    assert "say hi" in json.dumps(body["messages"][-1]), r.why()


@pytest.mark.parametrize(("protocol", "gateway"), ROUND_TRIP)
def test_tool_round_trip(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, tool_reply(TOOL, {"filePath": str(r.file)}), text_reply(FINAL))
    r.check_finished(FINAL, kilo(r, "What does notes.txt say?"))
    r.tool_round_trip(script, TOOL, {"filePath": str(r.file)})

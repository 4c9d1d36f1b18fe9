"""Hermes Agent (``hermes -z "…"``, one-shot) through the gateway with its built-in ``stepfun``
provider: ``STEPFUN_BASE_URL`` pointed at the gateway's ``/step_plan/v1`` (Chat Completions, models
discovered from ``/step_plan/v1/models``), and the same provider with ``api_mode: anthropic_messages``
(the ``anthropic`` package, ``STEPFUN_BASE_URL`` at ``/step_plan``: the SDK appends ``/v1/messages``).
"""

from __future__ import annotations

import json

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

AGENT = "Hermes"
TOOL = "read_file"  # {"path": ...}


def config_yaml(protocol: str) -> str:
    """``~/.hermes/config.yaml``. Lazy installs off: otherwise Hermes pip-installs optional tool
    backends (edge-tts, …) into its own environment on the first run."""
    text = f"model:\n  provider: stepfun\n  default: {MODEL}\n"
    if protocol == "anthropic":
        text += "  api_mode: anthropic_messages\n"
    return text + "security:\n  allow_lazy_installs: false\n"


@pytest.fixture(autouse=True)
def _needs_hermes() -> None:
    binary("hermes")


def hermes(r: AgentRun, prompt: str) -> str:
    (r.home / ".hermes").mkdir(exist_ok=True)
    (r.home / ".hermes" / "config.yaml").write_text(config_yaml(r.protocol))
    base = r.openai_base if r.protocol == "openai" else r.anthropic_base
    env = base_env(r.home, STEPFUN_API_KEY=r.key, STEPFUN_BASE_URL=base)
    r.execute([binary("hermes"), "-z", prompt], env)
    return r.run.stdout


@pytest.mark.parametrize(("protocol", "gateway"), SAY_HI)
def test_say_hi(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(HI))
    r.check_finished(HI, hermes(r, "say hi"))
    assert len(r.upstream_posts) == 1, r.why("one turn, one upstream call")
    body = r.main_request(script)
    assert body["model"] == MODEL and body["stream"] is True, r.why()
    assert {TOOL, "write_file", "terminal"} <= tool_names(body), r.why(f"tools {sorted(tool_names(body))}")
    assert "say hi" in json.dumps(body["messages"][-1]), r.why()
    if protocol == "openai":  # the stepfun provider lists the models it may use
        listed = [x for x in r.ingress.exchanges if x.method == "GET" and x.path == "/step_plan/v1/models"]
        assert listed and all(x.status == 200 for x in listed), r.why("no model discovery")


@pytest.mark.parametrize(("protocol", "gateway"), ROUND_TRIP)
def test_tool_round_trip(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, tool_reply(TOOL, {"path": str(r.file)}), text_reply(FINAL))
    r.check_finished(FINAL, hermes(r, "What does notes.txt say?"))
    r.tool_round_trip(script, TOOL, {"path": str(r.file)})

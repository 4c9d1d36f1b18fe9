"""Aider (``aider --message "…"``) through the gateway with ``openai/step-3.5-flash``
(→ ``/step_plan/v1/chat/completions``) and ``anthropic/step-3.5-flash`` (→ ``/step_plan/v1/messages``).

Aider has no tool calls: it reads a file when the model names one (a file git tracks), asks to
add it to the chat (``--yes-always`` says yes) and sends the conversation again with the file's
contents. That is its round trip here: the fake first answers by naming notes.txt, and the
second request must carry the file.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.agents.cli import base_env, binary
from tests.agents.matrix import (
    FILE_NAME,
    FILE_TEXT,
    FINAL,
    HI,
    MODEL,
    ROUND_TRIP,
    SAY_HI,
    AgentRun,
    AgentRunFactory,
    Script,
    text_reply,
)

pytestmark = [pytest.mark.cli_agents, pytest.mark.slow]

AGENT = "Aider"
ASK_FOR_FILE = f"To answer that I need to see {FILE_NAME}."

CONF = """\
model: {protocol}/step-3.5-flash
analytics-disable: true
check-update: false
show-release-notes: false
show-model-warnings: false
auto-commits: false
dirty-commits: false
gitignore: false
yes-always: true
pretty: false
fancy-input: false
"""


def metadata() -> dict[str, Any]:
    """``~/.aider.model.metadata.json``: the models' limits, so Aider does not fetch LiteLLM's
    price list from GitHub to look them up."""
    entry = {"max_input_tokens": 262144, "max_output_tokens": 65536, "input_cost_per_token": 0,
             "output_cost_per_token": 0, "mode": "chat"}
    return {f"{p}/{MODEL}": {**entry, "litellm_provider": p} for p in ("openai", "anthropic")}


@pytest.fixture(autouse=True)
def _needs_aider() -> None:
    binary("aider")


def aider(r: AgentRun, message: str) -> str:
    (r.home / ".aider.conf.yml").write_text(CONF.format(protocol=r.protocol))
    (r.home / ".aider.model.metadata.json").write_text(json.dumps(metadata(), indent=2))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for cmd in (["init", "-q"], ["add", FILE_NAME], ["commit", "-qm", "notes"]):
        subprocess.run([*git, *cmd], cwd=r.cwd, check=True, capture_output=True, env=base_env(r.home))
    env = base_env(r.home, LITELLM_LOCAL_MODEL_COST_MAP="True")
    if r.protocol == "openai":
        env |= {"OPENAI_API_KEY": r.key, "OPENAI_API_BASE": r.openai_base}
    else:
        env |= {"ANTHROPIC_API_KEY": r.key, "ANTHROPIC_API_BASE": r.anthropic_base}
    r.execute([binary("aider"), "--message", message], env)
    return r.run.stdout


def _everything(body: dict[str, Any]) -> str:
    return json.dumps(body.get("system", "")) + json.dumps(body["messages"])


@pytest.mark.parametrize(("protocol", "gateway"), SAY_HI)
def test_say_hi(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(HI), is_main=lambda body: True)
    r.check_finished(HI, aider(r, "say hi"))
    assert len(r.upstream_posts) == 1, r.why("one message, one upstream call")
    body = r.main_request(script)
    assert body["model"] == MODEL and body["stream"] is True, r.why()
    assert not body.get("tools"), r.why("Aider sends no tools")
    assert "say hi" in json.dumps(body["messages"][-1]), r.why()
    assert FILE_TEXT not in _everything(body), r.why("the file is not in the chat until the model asks")


@pytest.mark.parametrize(("protocol", "gateway"), ROUND_TRIP)
def test_file_round_trip(agent_run: AgentRunFactory, protocol: str, gateway: str) -> None:
    r = agent_run(AGENT, protocol, gateway)
    script = Script(r.fake, text_reply(ASK_FOR_FILE), text_reply(FINAL), is_main=lambda body: True)
    # (a file named in the user's message would be added up front, before the first request)
    r.check_finished(FINAL, aider(r, "What do my notes say?"))
    assert len(script.main) == 2 and not script.steps, r.why(f"{len(script.main)} upstream calls, expected 2")
    first, second = r.main_request(script, 0), r.main_request(script, 1)
    assert FILE_TEXT not in _everything(first), r.why("the file was sent before the model asked for it")
    assert FILE_TEXT in _everything(second), r.why("the second request lacks the file's contents")
    assert ASK_FOR_FILE in _everything(second), r.why("the model's request is not in the history")
    assert (r.cwd / FILE_NAME).read_text() == FILE_TEXT + "\n", r.why("Aider changed the file")

"""docs/agents.md shows the set-ups CI uses, verbatim: each block marked ``<!-- tested: NAME -->``
is what the agent tests write, rendered with the docs' gateway URL; the environment that keeps
each CLI quiet is spelled out in full. (Fast: no agent runs.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.agents import test_aider, test_hermes, test_kilo, test_openclaw, test_qwen_code
from tests.agents.cli import CLAUDE_QUIET, OPENCODE_QUIET
from tests.conftest import ROOT

DOC = ROOT / "docs" / "agents.md"
BASE = "http://127.0.0.1:8000"
OPENAI_BASE, ANTHROPIC_BASE = f"{BASE}/step_plan/v1", f"{BASE}/step_plan"

EXPECTED: dict[str, Any] = {
    "openclaw.json": test_openclaw.config(OPENAI_BASE, ANTHROPIC_BASE, "/path/to/project"),
    "hermes-config.yaml": test_hermes.config_yaml("openai"),
    "hermes-config-anthropic.yaml": test_hermes.config_yaml("anthropic"),
    "qwen-settings.json": test_qwen_code.settings(OPENAI_BASE, ANTHROPIC_BASE),
    "kilo.json": test_kilo.config(OPENAI_BASE, "sk-step-YOUR-KEY"),
    "aider.conf.yml": test_aider.CONF.format(protocol="openai"),
    "aider.model.metadata.json": test_aider.metadata(),
}


def blocks() -> dict[str, str]:
    found = re.findall(r"<!-- tested: (\S+) -->\n```\w*\n(.*?)```", DOC.read_text(), re.S)
    return dict(found)


def test_every_tested_block_is_checked() -> None:
    assert sorted(blocks()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_block_is_what_ci_uses(name: str) -> None:
    text = blocks()[name]
    expected = EXPECTED[name]
    if isinstance(expected, str):
        assert text == expected, f"docs/agents.md block {name} differs from the test's:\n{expected}"
    else:
        assert json.loads(text) == expected, f"docs/agents.md block {name} differs from the test's:\n" \
                                             f"{json.dumps(expected, indent=2)}"


@pytest.mark.parametrize("quiet", [test_kilo.KILO_QUIET, CLAUDE_QUIET, OPENCODE_QUIET],
                         ids=["kilo", "claude", "opencode"])
def test_quiet_environment_is_documented(quiet: dict[str, str]) -> None:
    text = DOC.read_text()
    missing = [f"{k}={v}" for k, v in quiet.items() if f"{k}={v}" not in text]
    assert not missing, f"docs/agents.md lacks {missing}"

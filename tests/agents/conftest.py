"""Gateways for the agent-CLI tests.

``oup`` serves step-3.5-flash from the OpenAI-protocol fake upstream (the default
routing); ``aup`` routes step-3.5-flash to the same fake speaking the Anthropic protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agents.cli import KeyFor
from tests.agents.ingress import Ingress
from tests.agents.matrix import FILE_NAME, FILE_TEXT, AgentRun
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

ANTHROPIC_UPSTREAM = '[models."step-3.5-flash"]\nupstream = "fake_anthropic"\n'


@pytest.fixture(scope="session")
def oup(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("agents-oup"), fake)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def aup(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("agents-aup"), fake, extra=ANTHROPIC_UPSTREAM)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def agent_key() -> KeyFor:
    """``agent_key(gw, account)``: one key per gateway and account for the whole session
    (creating a key runs the ``stepplan`` CLI, which takes seconds on a loaded machine)."""
    cache: dict[tuple[int, str], str] = {}

    def get(gw: Gateway, account: str) -> str:
        if (gw.port, account) not in cache:
            cache[gw.port, account] = gw.new_key(account)
        return cache[gw.port, account]

    return get


@pytest.fixture
def agent_run(request: pytest.FixtureRequest, tmp_path: Path, fake: FakeUpstream,
              agent_key: KeyFor) -> Iterator[Callable[..., AgentRun]]:
    """``agent_run(agent, protocol, gateway="oup")``: a fresh workdir (holding notes.txt) and HOME,
    a key of the agent's own account, and a recording proxy in front of the gateway."""
    started: list[Ingress] = []

    def make(agent: str, protocol: str, gateway: str = "oup") -> AgentRun:
        gw: Gateway = request.getfixturevalue(gateway)
        ingress = Ingress(gw.url).start()
        started.append(ingress)
        cwd, home = tmp_path / "work", tmp_path / "home"
        cwd.mkdir()
        home.mkdir()
        (cwd / FILE_NAME).write_text(FILE_TEXT + "\n")
        key = agent_key(gw, agent.lower().replace(" ", "-"))  # creating a key costs ~2 s of CLI runs
        return AgentRun(agent, protocol, gw, gateway, fake, ingress, key, cwd, home)

    yield make
    for ingress in started:
        ingress.stop()

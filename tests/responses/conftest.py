"""Gateways for the Responses tests: ``gateway`` (tests/conftest.py) serves every model from the
OpenAI-protocol fake upstream; ``agw`` serves the flash models from the same fake speaking the
Anthropic protocol."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

ANTHROPIC_UPSTREAM = "".join(f'\n[models."{m}"]\nupstream = "fake_anthropic"\n'
                             for m in ("step-3.7-flash", "step-3.5-flash", "step-3.5-flash-2603"))


@pytest.fixture(scope="session")
def agw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("responses-aup"), fake, extra=ANTHROPIC_UPSTREAM)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def akey(agw: Gateway) -> str:
    return agw.new_key("responses-anthropic")


@pytest.fixture
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def aclient(agw: Gateway, akey: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=agw.openai_base, api_key=akey, max_retries=0, timeout=30)

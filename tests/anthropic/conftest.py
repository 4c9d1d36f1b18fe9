"""Fixtures for the Anthropic-protocol tests.

``gateway`` (the shared fixture) routes every model to the OpenAI-protocol fake upstream;
``agw`` is a second gateway whose step-3.5-flash, step-3.7-flash and deepseek-v4-pro (public
here) go to the same fake speaking the Anthropic protocol, so each test can pick either translation path.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

ANTHROPIC_UPSTREAM = """
[models."step-3.5-flash"]
upstream = "fake_anthropic"

[models."step-3.7-flash"]
upstream = "fake_anthropic"

# DeepSeek's Anthropic endpoint, asked for directly (it is normally an engine of the router).
[models."deepseek-v4-pro"]
upstream = "fake_anthropic"
public = true

[billing.plans.tiny]
monthly_credits = 1
prices = { monthly = "1" }
concurrency = 0
rpm = 0
"""


@pytest.fixture(scope="session")
def agw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("agw"), fake, extra=ANTHROPIC_UPSTREAM)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def akey(agw: Gateway) -> str:
    return agw.new_key("anthropic-tester")


@pytest.fixture
def client(gateway: Gateway, key: str) -> anthropic.Anthropic:
    """Anthropic client → OpenAI-protocol upstream."""
    return anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def aclient(agw: Gateway, akey: str) -> anthropic.Anthropic:
    """Anthropic client → Anthropic-protocol upstream."""
    return anthropic.Anthropic(base_url=agw.anthropic_base, api_key=akey, max_retries=0, timeout=30)


@pytest.fixture
def oclient(agw: Gateway, akey: str) -> openai.OpenAI:
    """OpenAI client → Anthropic-protocol upstream."""
    return openai.OpenAI(base_url=agw.openai_base, api_key=akey, max_retries=0, timeout=30)

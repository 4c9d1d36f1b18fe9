"""Reasoning effort is mapped, never rejected, the same way on every protocol.

Unit tests of the mapping (stepplan/protocols/effort.py: every model × every word, thinking
budgets, contradictions), then the running gateway with both client SDKs against both upstream
kinds: what the upstream received and the ``x-stepplan-effort`` header."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from stepplan.catalog import Catalog, ModelSpec
from stepplan.errors import InvalidRequest
from stepplan.pipeline import check_capabilities
from stepplan.protocols import effort
from stepplan.protocols.canonical import Message, Request, Text
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

CATALOG = Catalog.build()
WORDS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
OFF = "thinking off"  # DeepSeek: its thinking switch turned off, no effort
#: The documented table (docs/api.md): model × requested word → level used (None: no effort sent).
TABLE: dict[str, dict[str, str | None]] = {
    "step-3.7-flash": {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                       "xhigh": "high", "max": "high"},
    "step-3.5-flash-2603": {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high",
                            "xhigh": "high", "max": "high"},
    "step-3.5-flash": dict.fromkeys(WORDS),
    "deepseek-v4-pro": {"none": OFF, "minimal": "high", "low": "high", "medium": "high", "high": "high",
                        "xhigh": "high", "max": "max"},
}


# ============================================================================ the mapping
def _resolve(model: str, word: str | None = None, thinking: bool | None = None,
             budget: int | None = None) -> tuple[str | None, bool | None]:
    return effort.resolve(CATALOG.get(model), word, thinking, budget)


@pytest.mark.parametrize("model", list(TABLE))
@pytest.mark.parametrize("word", WORDS)
def test_every_model_and_word(model: str, word: str) -> None:
    want = TABLE[model][word]
    if want == OFF:
        assert _resolve(model, word) == (None, False)
    else:
        assert _resolve(model, word) == (want, None)
        assert CATALOG.get(model).check_effort(word) == want


def test_the_router_keeps_the_clients_word_for_its_engines() -> None:
    req = Request(model="step-router-v1", messages=[Message("user", [Text("hi")])], effort="xhigh")
    assert check_capabilities(req, CATALOG.get("step-router-v1")).effort == "xhigh"  # routing feature, then per engine


@pytest.mark.parametrize("budget,word", [(1, "low"), (500, "low"), (4096, "low"), (4097, "medium"),
                                         (16384, "medium"), (16385, "high"), (128_000, "high")])
def test_thinking_budget_table(budget: int, word: str) -> None:
    assert effort.budget_word(budget) == word
    assert _resolve("step-3.7-flash", None, True, budget) == (word, True)
    # then the nearest-level rule: 2603 has no medium (the tie goes to its default, high)
    assert _resolve("step-3.5-flash-2603", None, True, budget) == ({"medium": "high"}.get(word, word), True)
    assert _resolve("deepseek-v4-pro", None, True, budget) == ("high", True)
    assert _resolve("step-3.5-flash", None, True, budget) == (None, True)


def test_thinking_and_effort_together() -> None:
    assert _resolve("step-3.7-flash", "max", True, 500) == ("high", True)  # an explicit effort wins over the budget
    assert _resolve("step-3.7-flash", None, True) == ("medium", True)  # adaptive: the model's default
    assert _resolve("step-3.5-flash-2603", None, True) == ("high", True)
    assert _resolve("deepseek-v4-pro", None, True) == ("high", True)
    # Disabled wins over an effort (pitfalls 13, 18): no switch → lowest level and no "disabled" to contradict it.
    assert _resolve("step-3.7-flash", "high", False) == ("low", None)
    assert _resolve("step-3.5-flash", "high", False) == (None, None)
    assert _resolve("deepseek-v4-pro", "max", False) == (None, False)
    assert _resolve("step-3.7-flash") == (None, None)  # nothing asked, nothing sent


def test_parse_accepts_effort_words_only() -> None:
    assert effort.parse("High", "reasoning_effort") == "high"
    assert effort.parse(None, "reasoning_effort") is None
    for bad in ("extreme", "", 3, ["high"]):
        with pytest.raises(InvalidRequest) as ei:
            effort.parse(bad, "output_config.effort")
        assert ei.value.param == "output_config.effort"
        assert "none, minimal, low, medium, high, xhigh, max" in ei.value.message


def test_nearest_level_and_ties() -> None:
    assert effort.nearest("medium", ("low", "high"), "low") == "low"
    assert effort.nearest("medium", ("low", "high"), "high") == "high"
    assert effort.nearest("minimal", ("medium", "max"), "max") == "medium"
    assert effort.nearest("xhigh", ("minimal", "max"), "minimal") == "max"


def test_catalog_levels_are_checked_and_ordered() -> None:
    c = Catalog.build({"custom": {"efforts": ["high", "low"]}, "step-3.7-flash": {"efforts": ["low", "high"]},
                       "deepseek-chat": {"efforts": ["high", "max"], "default_effort": "max"}})
    custom = c.get("custom")
    assert (custom.efforts, custom.default_effort, custom.thinking_switch) == (("low", "high"), "low", False)
    assert c.get("step-3.7-flash").default_effort == "low"  # its medium default is gone with medium
    assert c.get("deepseek-chat").thinking_switch and c.get("deepseek-chat").effort_table["xhigh"] == "max"
    with pytest.raises(ValueError, match="not effort levels"):
        Catalog.build({"x": {"efforts": ["turbo"]}})
    with pytest.raises(ValueError, match="default_effort"):
        Catalog.build({"x": {"efforts": ["low"], "default_effort": "high"}})
    with pytest.raises(ValueError, match="default_effort"):
        ModelSpec("y", 1, 1, ("text",), (), "0", "0", "0", default_effort="low")


# ============================================================================ the running gateway
# egw: every model through the Anthropic-protocol fake, plus DeepSeek through the OpenAI-protocol one
# (a config-defined model: its name gives it DeepSeek's thinking switch).
EGW_CONFIG = """
[models."step-3.7-flash"]
upstream = "fake_anthropic"

[models."step-3.5-flash-2603"]
upstream = "fake_anthropic"

[models."step-3.5-flash"]
upstream = "fake_anthropic"

[models."deepseek-v4-pro"]
upstream = "fake_anthropic"
public = true

[models."deepseek-openai"]
upstream = "fake"
upstream_model = "deepseek-v4-pro"
efforts = ["high", "max"]
"""


@pytest.fixture(scope="module")
def egw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("effort"), fake, extra=EGW_CONFIG)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def ekey(egw: Gateway) -> str:
    return egw.new_key("effort-tester")


# (upstream protocol, gateway fixture, model asked for, row of TABLE)
ROUTES = [("openai", "gateway", m, m) for m in ("step-3.7-flash", "step-3.5-flash-2603", "step-3.5-flash")]
ROUTES += [("openai", "egw", "deepseek-openai", "deepseek-v4-pro")]
ROUTES += [("anthropic", "egw", m, m) for m in TABLE]


@pytest.fixture
def gw_key(request: pytest.FixtureRequest) -> Any:
    def get(name: str) -> tuple[Gateway, str]:
        if name == "gateway":
            return request.getfixturevalue("gateway"), request.getfixturevalue("key")
        return request.getfixturevalue("egw"), request.getfixturevalue("ekey")
    return get


def _call(protocol: str, gw: Gateway, k: str, model: str, stream: bool = False, effort_word: str | None = None,
          **kw: Any) -> Any:
    """One call through the client's SDK; returns the response headers."""
    if protocol == "chat":
        c = openai.OpenAI(base_url=gw.openai_base, api_key=k, max_retries=0, timeout=30)
        extra = {"reasoning_effort": effort_word} if effort_word is not None else {}
        raw = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=stream, extra_body={**extra, **kw})
    else:
        a = anthropic.Anthropic(base_url=gw.anthropic_base, api_key=k, max_retries=0, timeout=30)
        extra = {"output_config": {"effort": effort_word}} if effort_word is not None else {}
        raw = a.messages.with_raw_response.create(
            model=model, max_tokens=20_000, messages=[{"role": "user", "content": "hi"}], stream=stream,
            extra_body=extra, **kw)
    parsed = raw.parse()
    if stream:
        for _ in parsed:  # the whole stream, so the call completes
            pass
    return raw.headers


def _sent_effort(upstream: str, body: dict[str, Any]) -> str | None:
    if upstream == "openai":
        assert "output_config" not in body
        return body.get("reasoning_effort")
    assert "reasoning_effort" not in body
    return body.get("output_config", {}).get("effort")


@pytest.mark.parametrize("protocol", ["chat", "messages"])
@pytest.mark.parametrize("upstream,gw_name,model,row", ROUTES, ids=[f"{r[0]}-{r[2]}" for r in ROUTES])
def test_every_word_on_every_protocol_and_upstream(gw_key: Any, fake: FakeUpstream, protocol: str, upstream: str,
                                                   gw_name: str, model: str, row: str) -> None:
    gw, k = gw_key(gw_name)
    for word in WORDS:
        headers = _call(protocol, gw, k, model, effort_word=word)
        sent = fake.last
        assert sent.path == ("/v1/chat/completions" if upstream == "openai" else "/v1/messages")
        want = TABLE[row][word]
        if want == OFF:
            assert sent.body["thinking"] == {"type": "disabled"}, word
            want = None
        else:
            assert "thinking" not in sent.body, word
        assert _sent_effort(upstream, sent.body) == want, word
        assert headers.get("x-stepplan-effort") == want, word


@pytest.mark.parametrize("protocol", ["chat", "messages"])
@pytest.mark.parametrize("gw_name", ["gateway", "egw"])
def test_header_on_streams(gw_key: Any, fake: FakeUpstream, protocol: str, gw_name: str) -> None:
    gw, k = gw_key(gw_name)
    headers = _call(protocol, gw, k, "step-3.5-flash-2603", stream=True, effort_word="medium")
    assert headers["x-stepplan-effort"] == "high" and fake.last.body.get("stream") is True
    headers = _call(protocol, gw, k, "step-3.5-flash", stream=True, effort_word="high")
    assert "x-stepplan-effort" not in headers


@pytest.mark.parametrize("protocol,field", [("chat", "reasoning_effort"), ("messages", "output_config.effort")])
def test_only_non_words_are_rejected_naming_the_field(gateway: Gateway, key: str, fake: FakeUpstream,
                                                      protocol: str, field: str) -> None:
    for bad in ("extreme", 7):
        with pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as ei:
            _call(protocol, gateway, key, "step-3.7-flash", effort_word=bad)  # type: ignore[arg-type]
        body = ei.value.response.json()
        if protocol == "chat":
            assert body["error"]["code"] == "request_params_invalid" and body["error"]["param"] == field
            message = body["error"]["message"]
        else:
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
            message = body["error"]["message"]
        assert f"'{field}'" in message and "none, minimal, low, medium, high, xhigh, max" in message
    assert not fake.requests


# ============================================================================ Anthropic thinking → effort
# (client thinking, model) → (effort used, thinking forwarded to an Anthropic-protocol upstream)
THINKING = [
    ({"type": "enabled", "budget_tokens": 2000}, "step-3.7-flash", "low", {"type": "enabled", "budget_tokens": 2000}),
    ({"type": "enabled", "budget_tokens": 8000}, "step-3.7-flash", "medium",
     {"type": "enabled", "budget_tokens": 8000}),
    ({"type": "enabled", "budget_tokens": 16385}, "step-3.7-flash", "high",
     {"type": "enabled", "budget_tokens": 16385}),
    ({"type": "enabled", "budget_tokens": 8000}, "step-3.5-flash-2603", "high",
     {"type": "enabled", "budget_tokens": 8000}),
    ({"type": "adaptive"}, "step-3.7-flash", "medium", {"type": "adaptive"}),
    ({"type": "adaptive"}, "step-3.5-flash-2603", "high", {"type": "adaptive"}),
    ({"type": "disabled"}, "step-3.7-flash", "low", None),
    ({"type": "disabled"}, "step-3.5-flash", None, None),
    ({"type": "enabled", "budget_tokens": 2000}, "step-3.5-flash", None, {"type": "enabled", "budget_tokens": 2000}),
]


@pytest.mark.parametrize("thinking,model,want,native", THINKING,
                         ids=[f"{t['type']}-{t.get('budget_tokens', '')}-{m}" for t, m, _, _ in THINKING])
@pytest.mark.parametrize("gw_name", ["gateway", "egw"], ids=["openai-upstream", "anthropic-upstream"])
def test_anthropic_thinking_becomes_an_effort(gw_key: Any, fake: FakeUpstream, gw_name: str,
                                              thinking: dict[str, Any], model: str, want: str | None,
                                              native: dict[str, Any] | None) -> None:
    gw, k = gw_key(gw_name)
    headers = _call("messages", gw, k, model, thinking=thinking)
    body = fake.last.body
    assert headers.get("x-stepplan-effort") == want
    if gw_name == "gateway":  # an OpenAI-protocol upstream: the effort is the only reasoning knob it gets
        assert body.get("reasoning_effort") == want and "thinking" not in body
    else:  # an Anthropic-protocol upstream also gets thinking itself (never "disabled" beside an effort)
        assert body.get("output_config", {}).get("effort") == want and body.get("thinking") == native


def test_explicit_effort_wins_over_the_budget(gw_key: Any, fake: FakeUpstream) -> None:
    for gw_name in ("gateway", "egw"):
        gw, k = gw_key(gw_name)
        headers = _call("messages", gw, k, "step-3.7-flash", effort_word="max",
                        thinking={"type": "enabled", "budget_tokens": 2000})
        assert headers["x-stepplan-effort"] == "high"
        assert _sent_effort("openai" if gw_name == "gateway" else "anthropic", fake.last.body) == "high"


@pytest.mark.parametrize("protocol", ["chat", "messages"])
def test_deepseek_keeps_its_own_thinking_switch(gw_key: Any, fake: FakeUpstream, protocol: str) -> None:
    """DeepSeek behind an OpenAI-protocol upstream (pitfall 18): disabled goes as its switch, never
    with an effort; enabled goes as enabled, with the effort mapped to high/max."""
    gw, k = gw_key("egw")
    headers = _call(protocol, gw, k, "deepseek-openai", effort_word="max", thinking={"type": "disabled"})
    assert fake.last.body["thinking"] == {"type": "disabled"} and "reasoning_effort" not in fake.last.body
    assert "x-stepplan-effort" not in headers
    headers = _call(protocol, gw, k, "deepseek-openai", thinking={"type": "enabled", "budget_tokens": 30000})
    assert fake.last.body["thinking"] == {"type": "enabled"} and fake.last.body["reasoning_effort"] == "high"
    assert headers["x-stepplan-effort"] == "high"

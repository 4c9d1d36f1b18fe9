"""step-router-v1 calls are billed at the engine that actually served them (spec §5.2):
a forced Pro route at DeepSeek's price, a Flash route at step-3.5-flash's price (the default
flash engine, as the Step Plan page names it; step-3.7-flash when configured), and a Pro
failure that falls back to Flash at Flash's price."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from stepplan.routing import DEFAULT_PRO_SHARE, RouteInput, RouterScorer
from stepplan.routing.policy import threshold_for_pro_share
from tests.billing.conftest import Admin, expected_micro, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_completion, openai_text_stream

USAGE = {"prompt_tokens": 2_000, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1_024}}
MSGS = [{"role": "user", "content": "Design a lock-free queue and prove it linearizable."}]


@pytest.fixture(scope="module")
def pro_gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("pro"), fake, extra="\n[router]\nthreshold = 0.0\n")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def flash_gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("flash"), fake, extra="\n[router]\nthreshold = 1.0\n")
    yield gw
    gw.stop()


def routed(gw: Gateway, key: str, stream: bool = False) -> httpx.Response:
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "step-router-v1", "messages": MSGS, "stream": stream,
                         "stream_options": {"include_usage": True}})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("engine", ["deepseek-v4-pro", "step-3.5-flash"])
def test_router_call_billed_at_the_serving_engine(pro_gw: Gateway, flash_gw: Gateway, fake: FakeUpstream,
                                                  engine: str, stream: bool) -> None:
    gw = pro_gw if engine == "deepseek-v4-pro" else flash_gw
    admin = Admin(gw)
    name, key = admin.account()
    if stream:
        fake.queue_sse(openai_text_stream("routed", usage=USAGE))
    else:
        fake.queue_json(openai_completion("routed", usage=USAGE))
    r = routed(gw, key, stream)
    assert r.headers["x-stepplan-routed-model"] == engine
    assert fake.last.body["model"] == engine
    want = expected_micro(engine, 2_000 - 1_024, 1_024, 300)
    view = admin.usage(name)
    [rec] = view["usage"]["records"]
    assert rec["model_id"] == "step-router-v1" and rec["served_model"] == engine
    assert int(rec["credit_consumed_micro"]) == want
    [entry] = admin.entries(name)
    assert entry["route_score"] is not None


def test_router_call_via_anthropic_protocol_billed_at_the_serving_engine(pro_gw: Gateway,
                                                                          fake: FakeUpstream) -> None:
    admin = Admin(pro_gw)
    name, key = admin.account()
    fake.queue_json(openai_completion("routed", usage=USAGE))
    client = anthropic.Anthropic(base_url=pro_gw.anthropic_base, api_key=key, max_retries=0, timeout=30)
    client.messages.create(model="step-router-v1", max_tokens=1000, messages=MSGS)  # type: ignore[arg-type]
    assert admin.consumed(name) == expected_micro("deepseek-v4-pro", 2_000 - 1_024, 1_024, 300)


def test_router_fallback_is_billed_at_the_engine_that_answered(pro_gw: Gateway, fake: FakeUpstream) -> None:
    admin = Admin(pro_gw)
    name, key = admin.account()
    for _ in range(2):  # the Pro engine fails (one try + one retry) before any byte
        fake.queue_json({"error": {"message": "pro is down"}}, status=500)
    fake.queue_json(openai_completion("from flash", usage=USAGE))
    r = routed(pro_gw, key)
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    [rec] = admin.usage(name)["usage"]["records"]
    assert rec["served_model"] == "step-3.5-flash"
    assert int(rec["credit_consumed_micro"]) == expected_micro("step-3.5-flash", 2_000 - 1_024, 1_024, 300)


def test_router_reservation_uses_the_pro_engine_price(tmp_path: Path, fake: FakeUpstream) -> None:
    """An account that can afford a Flash call but not a Pro reservation gets 402 on a Pro route."""
    extra = ("\n[router]\nthreshold = 0.0\n[billing.plans.tiny]\nmonthly_credits = 3000000\n"
             'prices = { monthly = "1" }\n')
    gw = start_gateway(tmp_path / "gw", fake, extra=extra)
    try:
        admin = Admin(gw)
        _, key = admin.account(plan="tiny")
        body = {"model": "step-router-v1", "max_tokens": 200_000, "messages": MSGS}
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
        assert r.status_code == 402  # 200k output tokens × ¥27/M = 5.4M credits > 3M
        body["model"] = "step-3.7-flash"  # 200k × ¥8.1/M = 1.62M credits: affordable
        fake.queue_json(openai_completion("ok"))
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
        assert r.status_code == 200
    finally:
        gw.stop()


# ------------------------------------------------------------------ the default config's flash engine
EASY = [{"role": "user", "content": "hi"}]


def _send(gw: Gateway, key: str, protocol: str, stream: bool) -> httpx.Response:
    if protocol == "openai":
        body: dict = {"model": "step-router-v1", "messages": EASY, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body,
                       timeout=30)
    else:
        r = httpx.post(f"{gw.anthropic_base}/v1/messages", timeout=30,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": "step-router-v1", "max_tokens": 1000, "messages": EASY, "stream": stream})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_default_router_sends_flash_calls_to_step_3_5_flash_billed_at_its_price(
        bgw: Gateway, admin: Admin, fake: FakeUpstream, protocol: str, stream: bool) -> None:
    """No [router] section at all: an easy call goes to step-3.5-flash (spec §3/§4, the Step Plan
    page) on either client protocol, says so, and is charged at step-3.5-flash's prices."""
    scorer = RouterScorer()
    assert scorer.score(RouteInput(turns=[("user", "hi")])) < threshold_for_pro_share(DEFAULT_PRO_SHARE,
                                                                          scorer.score_quantiles)
    name, key = admin.account()
    if stream:
        fake.queue_sse(openai_text_stream("routed", usage=USAGE))
    else:
        fake.queue_json(openai_completion("routed", usage=USAGE))
    r = _send(bgw, key, protocol, stream)
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    assert fake.last.body["model"] == "step-3.5-flash"
    assert "reasoning_effort" not in fake.last.body  # step-3.5-flash has no effort levels
    want = expected_micro("step-3.5-flash", 2_000 - 1_024, 1_024, 300)
    assert want == (2_000 - 1_024) * 700_000 + 1_024 * 140_000 + 300 * 2_100_000  # ¥0.7 / ¥0.14 / ¥2.1 per 1M
    [rec] = admin.usage(name)["usage"]["records"]
    assert rec["model_id"] == "step-router-v1" and rec["served_model"] == "step-3.5-flash"
    assert int(rec["credit_consumed_micro"]) == want
    [entry] = admin.entries(name)
    assert int(entry["charged"]) == want and entry["route_score"] is not None


def test_router_flash_engine_is_configurable(tmp_path: Path, fake: FakeUpstream) -> None:
    """[router] flash_engine = "step-3.7-flash" (the later StepFun page): routed there, billed there."""
    gw = start_gateway(tmp_path / "gw", fake, extra='\n[router]\nthreshold = 1.0\nflash_engine = "step-3.7-flash"\n')
    try:
        admin = Admin(gw)
        for protocol in ("openai", "anthropic"):
            name, key = admin.account()
            fake.queue_json(openai_completion("routed", usage=USAGE))
            r = _send(gw, key, protocol, False)
            assert r.headers["x-stepplan-routed-model"] == "step-3.7-flash"
            assert fake.last.body["model"] == "step-3.7-flash"
            assert admin.consumed(name) == expected_micro("step-3.7-flash", 2_000 - 1_024, 1_024, 300)
    finally:
        gw.stop()

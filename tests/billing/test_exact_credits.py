"""Exact credits: every model, with and without cache hits, streamed and not, through
both client protocols and both upstream protocols. The expected charge is computed here
from the published prices, not by stepplan's pricing code."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.billing.conftest import Admin, buckets, expected_micro
from tests.conftest import Gateway
from tests.fakes.upstream import (
    FakeUpstream,
    anthropic_message,
    anthropic_text_stream,
    openai_completion,
    openai_text_stream,
)

MODELS = ("step-3.7-flash", "step-3.5-flash", "step-3.5-flash-2603")
PROMPT, CACHED, OUTPUT, REASONING = 4_321, 3_072, 777, 123


def queue_openai_usage(fake: FakeUpstream, stream: bool, cached: int) -> None:
    usage = {"prompt_tokens": PROMPT, "completion_tokens": OUTPUT, "total_tokens": PROMPT + OUTPUT,
             "prompt_tokens_details": {"cached_tokens": cached},
             "completion_tokens_details": {"reasoning_tokens": REASONING}}
    if stream:
        fake.queue_sse(openai_text_stream("Metered answer.", usage=usage))
    else:
        fake.queue_json(openai_completion("Metered answer.", usage=usage))


def queue_anthropic_usage(fake: FakeUpstream, stream: bool, cached: int) -> None:
    # Anthropic's input_tokens excludes cache reads (pitfall 20).
    usage = {"input_tokens": PROMPT - cached, "cache_read_input_tokens": cached,
             "cache_creation_input_tokens": 0, "output_tokens": OUTPUT}
    if stream:
        fake.queue_sse(anthropic_text_stream("Metered answer.", usage_in={**usage, "output_tokens": 1},
                                             output_tokens=OUTPUT))
    else:
        fake.queue_json(anthropic_message("Metered answer.", usage=usage))


def call_openai(gw: Gateway, key: str, model: str, stream: bool) -> httpx.Headers:
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "How much does this cost?"}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model=model, messages=msgs, stream=True, stream_options={"include_usage": True}) as resp:
            chunks = list(resp.parse())
            headers = resp.headers
        assert any(c.usage for c in chunks)
        return headers
    raw = client.chat.completions.with_raw_response.create(model=model, messages=msgs)
    raw.parse()
    return raw.headers


def call_anthropic(gw: Gateway, key: str, model: str, stream: bool) -> httpx.Headers:
    client = anthropic.Anthropic(base_url=gw.anthropic_base, api_key=key, max_retries=0, timeout=30)
    msgs: Any = [{"role": "user", "content": "How much does this cost?"}]
    if stream:
        with client.messages.with_streaming_response.create(model=model, max_tokens=2048, messages=msgs,
                                                            stream=True) as resp:
            events = list(resp.parse())
            headers = resp.headers
        assert events[-1].type == "message_stop"
        return headers
    raw = client.messages.with_raw_response.create(model=model, max_tokens=2048, messages=msgs)
    raw.parse()
    return raw.headers


@pytest.mark.parametrize("client_protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cached", [0, CACHED], ids=["nocache", "cache"])
@pytest.mark.parametrize("model", MODELS)
def test_exact_credit_openai_upstream(bgw: Gateway, admin: Admin, fake: FakeUpstream, model: str, cached: int,
                                      stream: bool, client_protocol: str) -> None:
    name, key = admin.account()
    queue_openai_usage(fake, stream, cached)
    call = call_openai if client_protocol == "openai" else call_anthropic
    headers = call(bgw, key, model, stream)
    want = expected_micro(model, PROMPT - cached, cached, OUTPUT)
    view = admin.usage(name)
    assert int(view["usage"]["credit_consumed_micro"]) == want
    rec = view["usage"]["records"][0]
    assert rec["calls"] == 1 and rec["model_id"] == model and rec["served_model"] == model
    assert rec["tokens"] == {"input": PROMPT - cached, "cache_read": cached, "cache_write": 0, "output": OUTPUT,
                             "reasoning": REASONING}
    pool = buckets(view, "subscription")[0]
    assert int(pool["credit_total_micro"]) - int(pool["credit_residual_micro"]) == want
    assert int(headers["x-stepplan-credit-remaining"]) <= int(pool["credit_total"])


@pytest.mark.parametrize("client_protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cached", [0, CACHED], ids=["nocache", "cache"])
@pytest.mark.parametrize("model", MODELS)
def test_exact_credit_anthropic_upstream(bgw_anth: Gateway, admin_anth: Admin, fake: FakeUpstream, model: str,
                                         cached: int, stream: bool, client_protocol: str) -> None:
    name, key = admin_anth.account()
    queue_anthropic_usage(fake, stream, cached)
    call = call_openai if client_protocol == "openai" else call_anthropic
    call(bgw_anth, key, model, stream)
    assert fake.last.path.endswith("/messages")
    want = expected_micro(model, PROMPT - cached, cached, OUTPUT)
    assert admin_anth.consumed(name) == want


def test_non_streamed_response_reports_credit_left_after_the_charge(bgw: Gateway, admin: Admin,
                                                                    fake: FakeUpstream) -> None:
    _name, key = admin.account(plan="flash-mini")
    queue_openai_usage(fake, False, 0)
    headers = call_openai(bgw, key, "step-3.5-flash", False)
    want = expected_micro("step-3.5-flash", PROMPT, 0, OUTPUT)
    assert int(headers["x-stepplan-credit-remaining"]) == (400_000_000 * 10**6 - want) // 10**6
    assert admin.check()["ok"]


def test_usage_endpoint_for_key_holders(bgw: Gateway, admin: Admin, fake: FakeUpstream) -> None:
    _name, key = admin.account(plan="flash-plus")
    queue_openai_usage(fake, False, CACHED)
    call_openai(bgw, key, "step-3.7-flash", False)
    for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        r = httpx.get(f"{bgw.openai_base}/usage", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["subscription"]["plan"] == "flash-plus" and body["subscription"]["priority_rate"] is True
        lim = body["plan_credit_rate_limit"]
        assert lim["credit_buckets"][0]["credit_total"] == "1600000000"
        assert lim["credit_buckets"][0]["type"] == 1
        assert 0.99 < float(lim["subscription_credit_left_rate"]) < 1.0
        assert lim["topup_credit_left_rate"] == "0"
        assert body["five_hour_usage_reset_time"] == 0  # window limits are off by default
        assert body["usage"]["records"][0]["model_id"] == "step-3.7-flash"
    # model filter and time range
    r = httpx.get(f"{bgw.openai_base}/usage", params={"model": "step-3.5-flash"},
                  headers={"authorization": f"Bearer {key}"})
    assert r.json()["usage"]["records"] == []
    r = httpx.get(f"{bgw.openai_base}/usage", params={"from": "2001-01-01", "to": "2001-02-01"},
                  headers={"authorization": f"Bearer {key}"})
    assert r.json()["usage"]["records"] == []
    r = httpx.get(f"{bgw.openai_base}/usage", params={"from": "yesterday"}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "from"
    r = httpx.get(f"{bgw.openai_base}/usage", headers={"authorization": "Bearer sk-step-nope"})
    assert r.status_code == 401

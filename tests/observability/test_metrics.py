"""GET /metrics: a scripted set of calls (both protocols, streamed and not, a 402, an upstream 500,
a routed call, a bad key) leaves exactly the expected counts and token/Credit sums; the
exposition parses; the endpoint needs the admin token on the main port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.billing.conftest import ADMIN, Admin, expected_micro, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream
from tests.observability.promtext import Samples, parse, scrape, value, wait_for

MODEL = "step-3.5-flash"
TINY = """
[billing.plans.tiny]
monthly_credits = 1
prices = { monthly = "1" }
"""
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def mgw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("metrics"), fake, extra=TINY)
    yield gw
    gw.stop()


def _openai(gw: Gateway, key: str, stream: bool = False, model: str = MODEL) -> httpx.Response:
    body: dict = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(f"{gw.openai_base}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=30)


def _anthropic(gw: Gateway, key: str, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    return httpx.post(f"{gw.anthropic_base}/v1/messages", json=body, headers={"x-api-key": key}, timeout=30)


def _credit(model: str, calls: int = 1) -> float:
    return calls * expected_micro(model, 11, 0, 7) / 1_000_000


def test_metrics_need_the_admin_token_on_the_main_port(mgw: Gateway) -> None:
    assert httpx.get(f"{mgw.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{mgw.url}/metrics", headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
    r = httpx.get(f"{mgw.url}/metrics", headers={"x-admin-token": ADMIN}, timeout=10)
    assert r.status_code == 200
    assert value(parse(r.text), "stepplan_processes") == 1


def test_scripted_calls_give_exact_counts_and_sums(mgw: Gateway, fake: FakeUpstream) -> None:
    admin = Admin(mgw)
    _, key = admin.account()
    _, poor_key = admin.account(plan="tiny")
    url = f"{mgw.url}/metrics"
    before = scrape(url, ADMIN_HEADERS)

    assert _openai(mgw, key).status_code == 200
    r = _openai(mgw, key, stream=True)
    assert r.status_code == 200 and "[DONE]" in r.text
    assert _anthropic(mgw, key).status_code == 200
    r = _anthropic(mgw, key, stream=True)
    assert r.status_code == 200 and "message_stop" in r.text
    assert _openai(mgw, poor_key).status_code == 402
    for _ in range(2):  # the gateway retries once (max_retries = 1)
        fake.queue_json({"error": {"message": "boom"}}, status=500)
    assert _openai(mgw, key).status_code == 502
    r = _openai(mgw, key, model="step-router-v1")
    assert r.status_code == 200
    routed = r.headers["x-stepplan-routed-model"]
    assert _openai(mgw, "sk-step-not-a-real-key").status_code == 401

    after = wait_for(url, lambda s: value(s, "stepplan_requests_total") - value(
        before, "stepplan_requests_total") >= 8, ADMIN_HEADERS)

    def d(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    req = "stepplan_requests_total"
    same = {"model": MODEL, "served_model": MODEL}
    assert d(req, **same, protocol="openai", stream="false", code="ok") == 1
    assert d(req, **same, protocol="openai", stream="true", code="ok") == 1
    assert d(req, **same, protocol="anthropic", stream="false", code="ok") == 1
    assert d(req, **same, protocol="anthropic", stream="true", code="ok") == 1
    assert d(req, **same, protocol="openai", stream="false", code="upstream_error") == 1
    assert d(req, model=MODEL, served_model="", protocol="openai", stream="false", code="quota_exceeded") == 1
    assert d(req, model="step-router-v1", served_model=routed, protocol="openai", stream="false", code="ok") == 1
    assert d(req, model="unknown", protocol="openai", code="invalid_api_key") == 1
    assert d(req) == 8

    tok = "stepplan_tokens_total"
    assert d(tok, **same, type="input") == 4 * 11
    assert d(tok, **same, type="output") == 4 * 7
    assert d(tok, **same, type="cache_read") == 0
    assert d(tok, model="step-router-v1", served_model=routed, type="input") == 11
    assert d(tok, model="step-router-v1", served_model=routed, type="output") == 7

    credit = "stepplan_credit_charged_total"
    assert d(credit, **same) == pytest.approx(_credit(MODEL, 4), abs=1e-6)
    assert d(credit, model="step-router-v1", served_model=routed) == pytest.approx(_credit(routed), abs=1e-6)
    assert d("stepplan_plan_credit_charged_total", plan="flash-max") == pytest.approx(
        _credit(MODEL, 4) + _credit(routed), abs=1e-6)
    assert d("stepplan_credit_uncollected_total") == 0

    gen = {"gen_ai_request_model": MODEL, "gen_ai_response_model": MODEL, "gen_ai_operation_name": "chat",
           "gen_ai_provider_name": "fake"}
    assert d("gen_ai_server_time_to_first_token_seconds_count", **gen) == 2  # the two ok streams
    assert d("gen_ai_server_request_duration_seconds_count", **gen) == 5
    assert d("gen_ai_server_request_duration_seconds_count", **gen, error_type="upstream_error") == 1
    assert d("gen_ai_client_token_usage_sum", **gen, gen_ai_token_type="input") == 44
    assert d("gen_ai_client_token_usage_sum", **gen, gen_ai_token_type="output") == 28
    assert d("gen_ai_server_time_per_output_token_seconds_count", **gen) == 2
    # overhead: one per answered call, by protocol and stream
    assert d("stepplan_overhead_seconds_count", protocol="openai", stream="false") == 2
    assert d("stepplan_overhead_seconds_count", protocol="openai", stream="true") == 1
    assert d("stepplan_overhead_seconds_count", protocol="anthropic") == 2
    assert d("stepplan_upstream_errors_total", upstream="fake", kind="5xx") == 2
    assert d("stepplan_upstream_retries_total", upstream="fake") == 1
    assert d("stepplan_router_decisions_total") == 1
    assert d("stepplan_router_score_count") == 1
    assert d("stepplan_ledger_batch_size_sum") == 6  # one entry per admitted call (402 and 401 never reserve)
    assert value(after, "stepplan_processes") == 1
    assert value(after, "stepplan_reservations_in_flight") == 0
    assert value(after, "stepplan_upstream_in_flight", upstream="fake") == 0


def test_exposition_parses_and_names_are_stable(mgw: Gateway) -> None:
    text = httpx.get(f"{mgw.url}/metrics", headers=ADMIN_HEADERS, timeout=10).text
    samples: Samples = parse(text)
    names = {n for n, _ in samples}
    for must in ("gen_ai_server_time_to_first_token_seconds_bucket", "gen_ai_server_request_duration_seconds_bucket",
                 "stepplan_overhead_seconds_bucket", "gen_ai_client_token_usage_bucket"):
        assert must in names or f"# TYPE {must.rsplit('_bucket', 1)[0]} histogram" in text
    for line in text.splitlines():
        if line.startswith("stepplan_requests_total{"):
            labels = {kv.split("=")[0] for kv in line[line.index("{") + 1:line.index("}")].split(",")}
            assert labels == {"model", "served_model", "protocol", "stream", "code"}
    label_names = {k for _, labels in samples for k, _ in labels}
    assert not label_names & {"account", "account_id", "key", "key_id"}  # no identity labels without the opt-in


def test_metrics_off_means_no_endpoint(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "off", fake, extra="", env={"STEPPLAN_METRICS": "0"})
    try:
        r = httpx.get(f"{gw.url}/metrics", headers=ADMIN_HEADERS, timeout=10)
        assert r.status_code == 404
    finally:
        gw.stop()


def test_a_third_protocol_is_its_own_label(mgw: Gateway) -> None:
    """The Responses API route counts under protocol="responses" (the label comes from the route table)."""
    _, key = Admin(mgw).account()
    url = f"{mgw.url}/metrics"
    before = scrape(url, ADMIN_HEADERS)
    r = httpx.post(f"{mgw.openai_base}/responses", json={"model": MODEL, "input": "hello"},
                   headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    bad = httpx.post(f"{mgw.openai_base}/responses", json={"model": MODEL, "input": "hello"},
                     headers={"authorization": "Bearer sk-step-wrong"}, timeout=30)
    assert bad.status_code == 401
    after = scrape(url, ADMIN_HEADERS)
    req = "stepplan_requests_total"
    assert value(after, req, protocol="responses", model=MODEL, served_model=MODEL, code="ok") - value(
        before, req, protocol="responses", model=MODEL, served_model=MODEL, code="ok") == 1
    assert value(after, req, protocol="responses", code="invalid_api_key") - value(
        before, req, protocol="responses", code="invalid_api_key") == 1
    assert value(after, "stepplan_tokens_total", model=MODEL, type="output") - value(
        before, "stepplan_tokens_total", model=MODEL, type="output") == 7

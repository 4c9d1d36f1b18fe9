"""``[server] log_format = "json"``: every line the gateway writes is one JSON object; each call
is one ``"event": "call"`` record with the call line's fields; and a run through the error paths
(bad key, upstream 401 echoing a secret, 402, upstream 500) leaves no API key, Authorization
header, admin token or upstream key in any line."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx

from tests.billing.conftest import ADMIN, Admin, expected_micro
from tests.fakes.upstream import FakeUpstream
from tests.observability.test_workers import with_server_keys

MODEL = "step-3.5-flash"
TINY = """
[billing.plans.tiny]
monthly_credits = 1
prices = { monthly = "1" }
"""
BAD_KEY = "sk-step-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"


def test_json_logs_parse_and_hold_no_secret(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = with_server_keys(tmp_path / "gw", fake, 'log_format = "json"\nlog_level = "debug"')
    gw.config.write_text(gw.config.read_text() + TINY)
    gw.start()
    try:
        admin = Admin(gw)
        account, key = admin.account()
        _, poor = admin.account(plan="tiny")
        url = f"{gw.openai_base}/chat/completions"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

        def post(k: str, **extra: object) -> httpx.Response:
            return httpx.post(url, json={**body, **extra}, headers={"authorization": f"Bearer {k}"}, timeout=30)

        ok = post(key)
        assert ok.status_code == 200
        assert httpx.post(f"{gw.anthropic_base}/v1/messages", json={**body, "max_tokens": 50, "stream": True},
                          headers={"x-api-key": key}, timeout=30).status_code == 200
        assert post(BAD_KEY).status_code == 401
        fake.queue_json({"error": {"message": "Incorrect API key provided: upstream-secret. You can find your "
                                              "API key at https://example.invalid (sk-live-ABCDEFGHIJKLMNOP)"}},
                        status=401)
        r = post(key)
        assert r.status_code == 502 and "upstream-secret" not in r.text  # not even to the client
        assert post(poor).status_code == 402
        for _ in range(2):
            fake.queue_json({"error": {"message": "internal"}}, status=500)
        assert post(key).status_code == 502
        assert post(key, model="step-router-v1").status_code == 200
    finally:
        gw.stop()  # flushes the log

    lines = [ln for ln in gw.log_text().splitlines() if ln.strip()]
    records = []
    for ln in lines:
        rec = json.loads(ln)  # every line is one JSON object
        assert isinstance(rec, dict) and {"time", "level", "logger"} <= set(rec), ln
        records.append(rec)
    for secret in (key, BAD_KEY, ADMIN, "upstream-secret", "sk-live-ABCDEFGHIJKLMNOP", "Bearer "):
        leaked = [ln for ln in lines if secret in ln]
        assert not leaked, (secret, leaked[:3])

    calls = [r for r in records if r.get("event") == "call"]
    assert len(calls) == 5, calls  # the two ok calls, the upstream 401, the upstream 500, the routed call
    first = next(c for c in calls if c["request_id"] == ok.headers["x-trace-id"])
    assert first["trace_id"] == first["request_id"]
    assert first["account"] == account and isinstance(first["key_id"], int)
    assert first["model"] == MODEL and first["served_model"] == MODEL
    assert first["protocol"] == "openai" and first["stream"] is False
    assert first["status"] == "ok" and first["code"] == "ok"
    assert first["tokens"] == {"input": 11, "cache_read": 0, "cache_write": 0, "output": 7, "reasoning": 0,
                               "counted_locally": False}
    assert Decimal(first["credit"]) * 1_000_000 == expected_micro(MODEL, 11, 0, 7)
    assert first["ms"] > 0 and first["upstream_ms"] > 0
    assert {c["protocol"] for c in calls} == {"openai", "anthropic"}
    assert sorted(c["code"] for c in calls if c["status"] != "ok") == ["upstream_error", "upstream_error"]
    routed = next(c for c in calls if c["model"] == "step-router-v1")
    assert routed["route_reason"] and routed["route_score"] is not None
    # other records are JSON too, with a message
    assert any(r.get("message", "").startswith("stepplan listening") for r in records)
    assert any("invalid_api_key" in r.get("message", "") for r in records)

"""Crash safety: kill -9 a gateway with streams in flight. Nothing it reserved stays
reserved after a restart, a finished call's charge survives, and the ledger checks."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.billing.conftest import Admin, buckets, expected_micro, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_completion, openai_text_stream

STREAMS = 5


def _stream_until_first_chunk(gw: Gateway, key: str, started: threading.Event, errors: list[str]) -> None:
    body = {"model": "step-3.7-flash", "stream": True, "messages": [{"role": "user", "content": "long story"}]}
    try:
        with httpx.stream("POST", f"{gw.openai_base}/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:") and "content" in line:
                    started.set()
    except (httpx.HTTPError, AssertionError) as exc:  # the server dies under us: expected
        errors.append(type(exc).__name__)
    finally:
        started.set()


def crash_and_recover(gw: Gateway, fake: FakeUpstream) -> None:
    admin = Admin(gw)
    name, key = admin.account(plan="flash-mini")
    # A call that finished before the crash: its charge must survive.
    fake.queue_json(openai_completion("done", usage={"prompt_tokens": 100, "completion_tokens": 50}))
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.7-flash", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200
    finished = expected_micro("step-3.7-flash", 100, 0, 50)

    for _ in range(STREAMS):
        fake.queue_sse(openai_text_stream("word " * 200, pieces=100), delay=0.3)
    events = [threading.Event() for _ in range(STREAMS)]
    errors: list[str] = []
    threads = [threading.Thread(target=_stream_until_first_chunk, args=(gw, key, ev, errors)) for ev in events]
    for t in threads:
        t.start()
    for ev in events:
        assert ev.wait(20)
    view = admin.usage(name)
    assert int(buckets(view, "subscription")[0]["credit_in_flight_micro"]) > 0  # leased for the streams

    gw.stop(signal.SIGKILL)
    for t in threads:
        t.join(30)

    # Before a restart the dead process's lease is visible as leaked credit.
    out = gw.cli("ledger", "check", "--json", check=False)
    report = json.loads(out.stdout)
    assert out.returncode == 1 and not report["ok"]
    assert any("dead process" in p for p in report["problems"])

    gw.start()  # start-up reclaims the dead process's leases
    out = gw.cli("ledger", "check", "--json", check=False)
    assert out.returncode == 0, out.stdout
    view = admin.usage(name)
    pool = buckets(view, "subscription")[0]
    assert pool["credit_in_flight_micro"] == "0"
    assert int(pool["credit_total_micro"]) - int(pool["credit_residual_micro"]) == finished
    assert int(view["usage"]["credit_consumed_micro"]) == finished
    # ... and the account can spend its whole credit again.
    fake.queue_json(openai_completion("after", usage={"prompt_tokens": 10, "completion_tokens": 5}))
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "step-3.7-flash", "messages": [{"role": "user", "content": "again"}]}, timeout=30)
    assert r.status_code == 200
    assert admin.consumed(name) == finished + expected_micro("step-3.7-flash", 10, 0, 5)


def test_kill_9_with_streams_in_flight_sqlite(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = start_gateway(tmp_path / "gw", fake)
    try:
        crash_and_recover(gw, fake)
    finally:
        gw.stop()


@pytest.mark.postgres
def test_kill_9_with_streams_in_flight_postgres(tmp_path: Path, fake: FakeUpstream, pg_url: str) -> None:
    gw = start_gateway(tmp_path / "gw", fake, db_url=pg_url)
    try:
        crash_and_recover(gw, fake)
    finally:
        gw.stop()


@pytest.mark.postgres
def test_surviving_process_reclaims_a_dead_peers_leases(tmp_path: Path, fake: FakeUpstream, pg_url: str) -> None:
    """Two processes; one is killed and never restarted: the survivor's sweep returns its leases."""
    extra = "\n[billing]\nsweep_seconds = 0.5\n"
    a = start_gateway(tmp_path / "a", fake, db_url=pg_url, extra=extra)
    b = start_gateway(tmp_path / "b", fake, db_url=pg_url, extra=extra)
    try:
        admin = Admin(a)
        name, key = admin.account(plan="flash-mini")
        fake.queue_sse(openai_text_stream("word " * 100, pieces=50), delay=0.3)
        started, errors = threading.Event(), []
        t = threading.Thread(target=_stream_until_first_chunk, args=(b, key, started, errors))
        t.start()
        assert started.wait(20)
        assert int(buckets(admin.usage(name), "subscription")[0]["credit_in_flight_micro"]) > 0
        b.stop(signal.SIGKILL)
        t.join(30)
        t0 = time.time()
        while time.time() - t0 < 40:
            if buckets(admin.usage(name), "subscription")[0]["credit_in_flight_micro"] == "0":
                break
            time.sleep(0.25)
        assert buckets(admin.usage(name), "subscription")[0]["credit_in_flight_micro"] == "0"
        assert admin.check()["ok"]
    finally:
        a.stop()
        b.stop()

"""Server-level behaviour: load shedding, probes, several workers on one SQLite database."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_completion


def test_overloaded_503_in_callers_protocol(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake)
    # max_concurrency lives in [server], which the test config already opens: append the key there.
    text = gw.config.read_text().replace('[server]\ndefault_upstream = "fake"',
                                         '[server]\ndefault_upstream = "fake"\nmax_concurrency = 1')
    gw.config.write_text(text)
    gw.start()
    try:
        key = gw.new_key("busy")
        fake.queue(Reply(json=openai_completion("slow"), first_delay=1.5))
        body = {"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(httpx.post, f"{gw.openai_base}/chat/completions", json=body,
                               headers={"authorization": f"Bearer {key}"}, timeout=30)
            deadline = time.monotonic() + 20  # the slow call has reached the upstream: it holds the one slot
            while not fake.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fake.requests, "the first call never reached the upstream"
            r = httpx.post(f"{gw.openai_base}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            a = httpx.post(f"{gw.openai_base}/messages", json={**body, "max_tokens": 5},
                           headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
            assert slow.result().status_code == 200
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded"
        assert r.headers["retry-after"] == "1"
        assert a.status_code == 503 and a.json()["error"]["type"] == "overloaded_error"
    finally:
        gw.stop()


@pytest.mark.parametrize("path", ["/", "/step_plan"])
def test_probes_answer_200(gateway, path: str) -> None:  # type: ignore[no-untyped-def]
    assert httpx.head(gateway.url + path).status_code == 200
    assert httpx.get(gateway.url + path).status_code == 200


def test_two_workers_on_sqlite(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake)
    gw.start(workers=2)
    try:
        key = gw.new_key("multi")
        body = {"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30) as c:  # new connections spread over both workers
            codes = [c.post(f"{gw.openai_base}/chat/completions", json=body,
                            headers={"authorization": f"Bearer {key}", "connection": "close"}).status_code
                     for _ in range(20)]
        assert codes == [200] * 20
        keys = json.loads(gw.cli("keys", "list", "--account", "multi", "--json").stdout)
        gw.cli("keys", "revoke", str(keys[0]["id"]))
        deadline = time.monotonic() + 10  # every worker polls the auth epoch (0.25 s); poll until all refuse
        with httpx.Client(timeout=30) as c:
            while True:
                codes = [c.post(f"{gw.openai_base}/chat/completions", json=body,
                                headers={"authorization": f"Bearer {key}", "connection": "close"}).status_code
                         for _ in range(10)]
                if codes == [401] * 10 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert codes == [401] * 10, "revocation must reach every worker"
    finally:
        gw.stop()

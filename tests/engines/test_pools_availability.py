"""Availability under faults (issue 14): a pool of three members on 127.0.0.1 — one failing 30%
of its calls with 503, one always answering 429 with ``Retry-After: 2``, one healthy — takes
300 calls at concurrency 16 through the real gateway. At least 99.9% succeed (here: all), each
is billed once, and ``stepplan ledger check`` passes. Bounded: every call has a 30 s timeout."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.billing.conftest import Admin, expected_micro, start_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_completion

CALLS, CONCURRENCY = 300, 16
USAGE = {"prompt_tokens": 100, "completion_tokens": 20}


def test_three_member_pool_under_faults(tmp_path: Path, fake: FakeUpstream) -> None:
    flaky, throttled, healthy = FakeUpstream().start(), FakeUpstream().start(), FakeUpstream().start()
    rng = random.Random(14)
    try:
        for _ in range(CALLS * 2):  # more replies than calls: each queue outlasts the run
            if rng.random() < 0.3:
                flaky.queue(Reply(status=503, json={"error": {"message": "flaky"}}))
            else:
                flaky.queue_json(openai_completion("ok", usage=USAGE))
            throttled.queue(Reply(status=429, json={"error": {"message": "slow down"}}, headers={"retry-after": "2"}))
            healthy.queue_json(openai_completion("ok", usage=USAGE))
        members = "".join(f"""
[[upstreams.pool.members]]
name = "{n}"
base_url = "{f.base_url}"
api_key = "key-{n}"
""" for n, f in (("flaky", flaky), ("throttled", throttled), ("healthy", healthy)))
        extra = ('\n[upstreams.pool]\nprotocol = "openai"\nmax_retries = 3\nfirst_byte_timeout = 10\n'
                 'idle_timeout = 10\n' + members + '\n[models."step-3.5-flash"]\nupstream = "pool"\n')
        gw = start_gateway(tmp_path / "gw", fake, extra=extra)
        try:
            admin = Admin(gw)
            name, key = admin.account()

            def call(_: int) -> tuple[int, str]:
                try:
                    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                                   json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]},
                                   timeout=30)
                except httpx.HTTPError as exc:
                    return 0, repr(exc)
                return r.status_code, r.headers.get("x-stepplan-served-by", "")

            with ThreadPoolExecutor(CONCURRENCY) as pool:
                results = list(pool.map(call, range(CALLS)))
            ok = sum(1 for status, _ in results if status == 200)
            served: dict[str, int] = {}
            for status, by in results:
                if status == 200:
                    served[by] = served.get(by, 0) + 1
            gaps = sorted(b.time - a.time for a, b in zip(throttled.requests, throttled.requests[1:], strict=False))
            print(f"\navailability: {ok}/{CALLS} ok; served by {served}; upstream requests: flaky "
                  f"{len(flaky.requests)}, throttled {len(throttled.requests)}, healthy {len(healthy.requests)}; "
                  f"gaps between requests to the throttled member (s): {[round(g, 2) for g in gaps]}")
            assert ok / CALLS >= 0.999, results
            assert "pool/throttled" not in served
            # billed once each, exactly
            assert admin.consumed(name) == CALLS * expected_micro("step-3.5-flash", 100, 0, 20)
            assert len(admin.entries(name)) == CALLS
            check = gw.cli("ledger", "check", check=False)
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            gw.stop()
    finally:
        for f in (flaky, throttled, healthy):
            f.stop()

"""Availability under upstream faults (issue 14): a real gateway whose model is served by a pool of
three fake members on 127.0.0.1 —

* ``flaky``: answers 30 % of its calls with 503, then goes down (connection refused) half-way
  through the run;
* ``throttled``: answers every 5th call with 429 and ``Retry-After: 2``;
* ``healthy``: always answers —

takes ``--calls`` non-streamed chat calls at ``--concurrency`` and reports the success rate, the
failed upstream attempts the gateway retried past, p50/p99 latency, which member served, whether any
call reached the throttled member inside a Retry-After it had been given (250 ms grace for calls
already on their way), whether every successful call was billed exactly once, and
``stepplan ledger check``.

    .venv/bin/python bench/availability.py [--calls 2000] [--concurrency 32] [--json]

Bounded: every call has a 60 s timeout, the run stops by itself, and every process and server it
starts is stopped at the end. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "availability-admin-token"
MODEL = "step-3.5-flash"
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
COMPLETION = orjson.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                        "finish_reason": "stop"}], "usage": USAGE})
RETRY_AFTER = 2.0
GRACE = 0.25  # a call the gateway sent just before it read the 429 may arrive just after it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Member:
    """One fake member: an aiohttp server with a behaviour, counting what it received."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name, self.rng, self.port = name, rng, free_port()
        self.received = 0
        self.last_429 = 0.0  # monotonic: when the last Retry-After was given
        self.violations = 0  # calls that arrived inside a Retry-After (less the grace)
        self.runner: web.AppRunner | None = None
        self.down = False

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        self.received += 1
        if self.name == "flaky" and self.rng.random() < 0.3:
            return web.json_response({"error": {"message": "flaky"}}, status=503)
        if self.name == "throttled":
            if self.last_429 and self.last_429 + GRACE < now < self.last_429 + RETRY_AFTER:
                self.violations += 1
            if self.received % 5 == 0:
                self.last_429 = now
                return web.json_response({"error": {"message": "slow down"}}, status=429,
                                         headers={"retry-after": f"{RETRY_AFTER:g}"})
        return web.Response(body=COMPLETION, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening and close every connection: from now on, connection refused."""
        self.down = True
        if self.runner is not None:
            await self.runner.cleanup()


class Members:
    """The three members, served by an event loop in a thread of their own."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.by_name = {n: Member(n, rng) for n in ("flaky", "throttled", "healthy")}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="members")
        self.thread.start()
        for m in self.by_name.values():
            self.run(m.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        for m in self.by_name.values():
            if not m.down:
                self.run(m.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def config(tmp: Path, members: Members) -> Path:
    parts = [f'[database]\nurl = "sqlite:///{tmp}/availability.db"\n',
             '[upstreams.pool]\nprotocol = "openai"\nmax_retries = 3\nfirst_byte_timeout = 10\nidle_timeout = 10\n']
    for m in members.by_name.values():
        parts.append(f'[[upstreams.pool.members]]\nname = "{m.name}"\nbase_url = "http://127.0.0.1:{m.port}/v1"\n'
                     f'api_key = "key-{m.name}"\n')
    parts.append(f'[models."{MODEL}"]\nupstream = "pool"\n')
    path = tmp / "availability.toml"
    path.write_text("\n".join(parts))
    return path


class Gateway:
    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPLAN_")
                    and not k.lower().endswith("_proxy")}
        self.env.update({"STEPPLAN_CONFIG": str(cfg), "STEPPLAN_ADMIN_TOKEN": ADMIN, "STEPPLAN_METRICS": "0",
                         "PYTHONPATH": str(ROOT)})
        self.log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "stepplan", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--workers", "1"], env=self.env, cwd=tmp, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the gateway did not start; see {tmp / 'gateway.log'}")

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, f"{self.url}{path}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def ledger_check(self) -> tuple[bool, str]:
        r = subprocess.run([sys.executable, "-m", "stepplan", "ledger", "check"], env=self.env, capture_output=True,
                           text=True, timeout=120)
        return r.returncode == 0, (r.stdout + r.stderr).strip()[-300:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


async def drive(gw: Gateway, key: str, members: Members, calls: int, concurrency: int) -> list[tuple[int, float, str]]:
    results: list[tuple[int, float, str]] = []
    sem = asyncio.Semaphore(concurrency)
    flaky = members.by_name["flaky"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"{gw.url}/step_plan/v1", limits=limits, timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def one(i: int) -> None:
            async with sem:
                if i == calls // 2 and not flaky.down:  # half-way: the flaky member goes down
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(flaky.stop(), members.loop))
                t0 = time.perf_counter()
                try:
                    r = await client.post("/chat/completions", json=body)
                    out = (r.status_code, time.perf_counter() - t0, r.headers.get("x-stepplan-served-by", ""))
                except httpx.HTTPError as exc:
                    out = (0, time.perf_counter() - t0, type(exc).__name__)
                results.append(out)

        await asyncio.gather(*(one(i) for i in range(calls)))
    return results


def run(calls: int, concurrency: int, seed: int = 14) -> dict[str, Any]:
    members = Members(seed)
    with tempfile.TemporaryDirectory(prefix="stepplan-availability-") as d:
        tmp = Path(d)
        try:
            gw = Gateway(config(tmp, members), tmp)
        except BaseException:
            members.close()
            raise
        try:
            gw.admin("POST", "/admin/v1/accounts", json={"name": "avail"})
            gw.admin("POST", "/admin/v1/accounts/avail/subscription", json={"plan": "flash-max"})
            key = gw.admin("POST", "/admin/v1/accounts/avail/keys", json={})["key"]
            t0 = time.perf_counter()
            results = asyncio.run(drive(gw, key, members, calls, concurrency))
            wall = time.perf_counter() - t0
            pool = next(u for u in gw.admin("GET", "/admin/v1/upstreams")["data"] if u["name"] == "pool")
            entries = gw.admin("GET", "/admin/v1/ledger/entries", params={"account": "avail", "limit": calls + 100})
            consumed = int(gw.admin("GET", "/admin/v1/accounts/avail/usage")["usage"]["credit_consumed_micro"])
            ledger_ok, ledger_out = gw.ledger_check()
        finally:
            gw.stop()
            members.close()
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[1] for r in ok)
    served: dict[str, int] = {}
    for r in ok:
        served[r[2]] = served.get(r[2], 0) + 1
    failures = {m["name"]: m["failures"] for m in pool["members"]}
    billed_ok = [e for e in entries["data"] if e["status"] == "ok"]
    per_call = {int(e["charged"]) for e in billed_ok}
    return {
        "calls": calls, "concurrency": concurrency, "seconds": round(wall, 2),
        "ok": len(ok), "success_rate": len(ok) / calls,
        "errors": {str(s): sum(1 for r in results if r[0] == s) for s in {r[0] for r in results} if s != 200},
        "retried_attempts": sum(failures.values()), "member_failures": failures,
        "upstream_requests": {n: m.received for n, m in members.by_name.items()},
        "served_by": served,
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
        "throttled_violations": members.by_name["throttled"].violations,
        "ledger_entries_ok": len(billed_ok), "charged_per_call": sorted(per_call), "consumed_micro": consumed,
        "billed_once": len(billed_ok) == len(ok) and len(per_call) == 1 and consumed == sum(per_call) * len(ok),
        "ledger_check": ledger_ok, "ledger_check_output": ledger_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = ap.parse_args()
    report = run(args.calls, args.concurrency, args.seed)
    if args.json:
        print(json.dumps(report))
        return
    for k, v in report.items():
        print(f"{k:22s} {v}")


if __name__ == "__main__":
    main()

"""Does proxy support cost the direct path anything? The upstream client's acquire → send →
headers → body → give-back path, with no proxy configured, before (``_h1.py`` as of a given git
revision, loaded from git) and after (the working tree), interleaved in one process against a
minimal keep-alive HTTP server in the same event loop, several rounds; the median per-request
time of each, and the ratio.

    python bench/micro/h1_proxy_overhead.py --before 50cf433 --rounds 9 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

import stepplan.engines.transport
from stepplan.engines import _h1 as after

BODY = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
HEADERS = b"content-type: application/json\r\nauthorization: Bearer sk-bench\r\nAccept: application/json\r\n"
REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


class Server(asyncio.Protocol):
    """Answers every request (one per data_received: the client sends head and body in one write)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(ANSWER)


def load_before(rev: str) -> ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:stepplan/engines/_h1.py"], check=True, capture_output=True,
                         text=True).stdout
    name = "stepplan.engines._h1_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "stepplan.engines"
    sys.modules[name] = mod
    assert stepplan.engines.transport  # the relative imports resolve against the real package
    exec(compile(src, f"<{rev}:_h1.py>", "exec"), mod.__dict__)
    return mod


async def round_(mod: ModuleType, port: int, n: int) -> float:
    pool = mod.ConnectionPool(f"http://127.0.0.1:{port}/v1")
    req = stepplan.engines.transport.UpstreamRequest("POST", "/chat/completions", HEADERS, REQUEST, 30.0)
    for _ in range(50):  # warm: one connection, reused
        await (await pool.handle_request(req)).read()
    t0 = time.perf_counter()
    for _ in range(n):
        resp = await pool.handle_request(req)
        await resp.read()
    dt = time.perf_counter() - t0
    await pool.aclose()
    return dt / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="HEAD~1", help="git revision of the 'before' _h1.py")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    before = load_before(args.before)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    times: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(args.rounds):
        order = [("before", before), ("after", after)] if i % 2 == 0 else [("after", after), ("before", before)]
        for name, mod in order:
            times[name].append(await round_(mod, port, args.requests))
    server.close()
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"rounds {args.rounds} x {args.requests} requests, one keep-alive connection, no proxy")
    for name in ("before", "after"):
        print(f"{name:7s} median {statistics.median(times[name]):6.1f} µs/request   "
              f"(min {min(times[name]):6.1f}, max {max(times[name]):6.1f})")
    print(f"after / before = {a / b:.3f}")


if __name__ == "__main__":
    asyncio.run(main())

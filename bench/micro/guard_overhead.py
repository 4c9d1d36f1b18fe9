"""What the connection guard (``stepplan/http_guard.py``) adds per request over uvicorn's plain
httptools protocol: requests fed straight into ``data_received`` on one keep-alive connection, a
trivial ASGI app answering each, no sockets. Rounds alternate the two protocols; the minimum and the
median per request are printed::

    PYTHONPATH=. .venv/bin/python bench/micro/guard_overhead.py [--rounds 9] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from stepplan.http_guard import GuardedHttpToolsProtocol

REQUEST = (b"POST /step_plan/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer sk-step-0123456789012345678901234567890123456789012\r\nContent-Length: 120\r\n"
           b"User-Agent: bench\r\nAccept: */*\r\n\r\n" + b"x" * 120)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def per_request(cls: type[HttpToolsProtocol], n: int) -> float:
    cfg = uvicorn.Config(app, http=cls, access_log=False, log_level="warning", lifespan="off")
    cfg.load()
    proto = cls(cfg, ServerState(), app_state={})  # type: ignore[arg-type]
    transport = Transport()
    proto.connection_made(transport)
    t0 = time.thread_time()
    for _ in range(n):
        proto.data_received(REQUEST)
        for _ in range(4):  # let the request's task run to its response
            await asyncio.sleep(0)
    t1 = time.thread_time()
    if transport.writes < n:
        raise SystemExit(f"{cls.__name__}: {transport.writes} responses for {n} requests")
    proto.connection_lost(None)
    return (t1 - t0) / n * 1e6


async def main(rounds: int, n: int) -> None:
    results: dict[str, list[float]] = {"uvicorn httptools": [], "guarded": []}
    for _ in range(rounds):
        results["uvicorn httptools"].append(await per_request(HttpToolsProtocol, n))
        results["guarded"].append(await per_request(GuardedHttpToolsProtocol, n))
    for name, values in results.items():
        values.sort()
        print(f"{name:18s} min {values[0]:6.2f} µs  median {values[len(values) // 2]:6.2f} µs per request")
    print(f"guard overhead     min {results['guarded'][0] - results['uvicorn httptools'][0]:6.2f} µs per request")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="connection guard overhead per request")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--requests", type=int, default=20000)
    a = p.parse_args()
    uvloop.run(main(a.rounds, a.requests))

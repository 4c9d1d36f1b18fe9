"""Upstream HTTP client choice: stepplan's own HTTP/1.1 client vs aiohttp vs httpx, same load
against the fake upstream (JSON calls, then streamed calls read chunk by chunk).

    python bench/fake_upstream.py --port 18101 &
    python bench/micro/http_clients.py --url http://127.0.0.1:18101/v1/chat/completions
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import httpx
import orjson

from stepplan.engines._h1 import ConnectionPool, render_headers

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
SBODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})


async def run(name: str, fetch, n: int, conc: int) -> None:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem:
            await fetch()

    await asyncio.gather(*(one() for _ in range(200)))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{name:13s} {n / wall:8.0f} req/s   {cpu / n * 1e6:6.0f} µs CPU per request (client side)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:18101/v1/chat/completions")
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-c", type=int, default=32)
    a = ap.parse_args()
    headers = {"content-type": "application/json"}
    pool = ConnectionPool(a.url.rsplit("/v1/", 1)[0], max_connections=1000)
    path = "/v1/" + a.url.rsplit("/v1/", 1)[1]
    raw_headers = render_headers(headers)

    async def h1_json() -> None:
        r = await pool.request("POST", path, raw_headers, BODY, idle_timeout=30)
        orjson.loads(await r.read())

    async def h1_stream() -> None:
        r = await pool.request("POST", path, raw_headers, SBODY, idle_timeout=30)
        async for _ in r.chunks():
            pass

    await run("h1 json", h1_json, a.n, a.c)
    await run("h1 sse", h1_stream, a.n, a.c)
    await pool.aclose()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as s:
        async def f1() -> None:
            async with s.post(a.url, data=BODY, headers=headers) as r:
                orjson.loads(await r.read())

        async def f1s() -> None:
            async with s.post(a.url, data=SBODY, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass
        await run("aiohttp json", f1, a.n, a.c)
        await run("aiohttp sse", f1s, a.n, a.c)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as c:
        async def f2() -> None:
            r = await c.post(a.url, content=BODY, headers=headers)
            orjson.loads(r.content)
        await run("httpx json", f2, a.n, a.c)

if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())

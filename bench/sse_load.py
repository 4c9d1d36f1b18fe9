"""Bounded aiohttp load generator for SSE and plain JSON endpoints.

Example::

    python bench/sse_load.py http://127.0.0.1:18001/v1/chat/completions -c 32 -d 10 \\
        --body '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' \\
        -H 'Authorization: Bearer sk-x'

Each of the ``-c`` workers owns one ``aiohttp.ClientSession`` with one
keep-alive connection and sends requests back to back until ``-d`` seconds
have passed (or ``--max-requests`` were started). Requests still in flight at
the deadline may finish within ``--grace`` seconds; the rest are cancelled and
not counted.

Prints one JSON object: requests, errors (by kind), req/s, latency (full
request / full stream) p50/p90/p99, TTFT p50/p90/p99 (time to the first chunk
that carries a token: a non-empty ``content``/``reasoning_content`` delta or an
Anthropic ``content_block_delta``), and the p50 of the
``x-stepplan-overhead-ms`` response header when the target sends it.

A stream counts as an error (``incomplete_stream``) unless it ends with
``data: [DONE]`` (OpenAI), a ``message_stop`` event (Anthropic) or a ``response.completed``
event (OpenAI Responses; a ``"delta"`` there is a token). Only
127.0.0.1 / localhost targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

TOKEN_RE = re.compile(rb'"(?:reasoning_)?content": ?"[^"]|"reasoning": ?"[^"]|content_block_delta|"tool_calls": ?\[\{'
                      rb'|"delta": ?"[^"]')
END_MARKERS = (b"data: [DONE]", b"data:[DONE]", b"message_stop", b'"response.completed"}', b'"response.incomplete"}')
OVERHEAD_HEADER = "x-stepplan-overhead-ms"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Config:
    url: str
    concurrency: int = 32
    duration: float = 10.0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    sse: bool = False
    method: str = "POST"
    timeout: float = 60.0
    max_requests: int = 0  # 0 = unlimited
    grace: float = 10.0
    warmup: float = 0.0


@dataclass
class Raw:
    """Raw samples from one process (seconds)."""

    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    bytes_in: int = 0
    elapsed: float = 0.0


def _percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)
    n = len(v)

    def pick(q: float) -> float:
        return round(v[min(n - 1, int(q * n))] * scale, 3)

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": round(v[-1] * scale, 3)}


async def _one(session: aiohttp.ClientSession, cfg: Config, raw: Raw, record: bool) -> None:
    perf = time.perf_counter
    t0 = perf()
    ttft: float | None = None
    async with session.request(cfg.method, cfg.url, data=cfg.body, headers=cfg.headers) as resp:
        if resp.status != 200:
            await resp.read()
            if record:
                raw.errors[f"status_{resp.status}"] += 1
            return
        overhead = resp.headers.get(OVERHEAD_HEADER)
        nbytes = 0
        if cfg.sse:
            search = TOKEN_RE.search
            tail = b""
            end = b""
            async for chunk in resp.content.iter_any():
                nbytes += len(chunk)
                if ttft is None:
                    buf = tail + chunk
                    if search(buf):
                        ttft = perf() - t0
                    else:
                        tail = buf[-48:]
                end = chunk[-48:] if len(chunk) >= 48 else (end + chunk)[-48:]
            done = perf() - t0
            if not any(m in end for m in END_MARKERS):
                if record:
                    raw.errors["incomplete_stream"] += 1
                return
            if ttft is None:
                if record:
                    raw.errors["no_token"] += 1
                return
        else:
            nbytes = len(await resp.read())
            done = perf() - t0
    if not record:
        return
    raw.ok += 1
    raw.bytes_in += nbytes
    raw.latencies.append(done)
    if ttft is not None:
        raw.ttfts.append(ttft)
    if overhead is not None:
        try:
            raw.overheads.append(float(overhead) / 1000.0)
        except ValueError:
            pass


async def _worker(cfg: Config, raw: Raw, t_measure: float, deadline: float, budget: list[int]) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=False, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout)
    perf = time.perf_counter
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        while True:
            now = perf()
            if now >= deadline:
                return
            record = now >= t_measure
            if record and cfg.max_requests:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            try:
                await _one(session, cfg, raw, record)
            except TimeoutError:
                if record:
                    raw.errors["timeout"] += 1
            except aiohttp.ClientError as exc:
                if record:
                    raw.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
            except OSError as exc:
                if record:
                    raw.errors[f"OSError_{exc.errno}"] += 1
                await asyncio.sleep(0.01)


async def run_async(cfg: Config) -> Raw:
    raw = Raw()
    start = time.perf_counter()
    t_measure = start + cfg.warmup
    deadline = t_measure + cfg.duration
    budget = [cfg.max_requests]
    tasks = [asyncio.create_task(_worker(cfg, raw, t_measure, deadline, budget)) for _ in range(cfg.concurrency)]
    remaining = deadline - time.perf_counter() + cfg.grace
    done, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.1))
    raw.cancelled = len(pending)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for t in done:
        exc = t.exception()
        if exc is not None:
            raw.errors[f"worker_{type(exc).__name__}"] += 1
    raw.elapsed = time.perf_counter() - t_measure
    return raw


def _run_in_process(cfg: Config) -> Raw:
    try:
        import uvloop

        return uvloop.run(run_async(cfg))
    except ImportError:  # pragma: no cover - optional
        return asyncio.run(run_async(cfg))


def summarize(cfg: Config, raws: list[Raw]) -> dict[str, Any]:
    ok = sum(r.ok for r in raws)
    errors: Counter[str] = Counter()
    for r in raws:
        errors.update(r.errors)
    latencies = [x for r in raws for x in r.latencies]
    ttfts = [x for r in raws for x in r.ttfts]
    overheads = [x for r in raws for x in r.overheads]
    elapsed = max((r.elapsed for r in raws), default=0.0)
    rps = sum(r.ok / r.elapsed for r in raws if r.elapsed > 0)
    return {
        "url": cfg.url,
        "mode": "sse" if cfg.sse else "plain",
        "concurrency": cfg.concurrency,
        "duration_s": cfg.duration,
        "elapsed_s": round(elapsed, 3),
        "requests": ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "cancelled_in_flight": sum(r.cancelled for r in raws),
        "req_per_s": round(rps, 2),
        "latency_ms": _percentiles(latencies),
        "ttft_ms": _percentiles(ttfts) if cfg.sse else None,
        "overhead_ms_p50": _percentiles(overheads)["p50"] if overheads else None,
        "overhead_samples": len(overheads),
        "bytes_per_response": round(sum(r.bytes_in for r in raws) / ok, 1) if ok else None,
    }


def run(cfg: Config, processes: int = 1) -> dict[str, Any]:
    """Run the load (optionally split over processes) and return the summary dict."""
    host = urlsplit(cfg.url).hostname or ""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"refusing non-local target {host!r}: load tests must target 127.0.0.1")
    processes = max(1, min(processes, cfg.concurrency))
    if processes == 1:
        return summarize(cfg, [_run_in_process(cfg)])
    per = [cfg.concurrency // processes + (1 if i < cfg.concurrency % processes else 0) for i in range(processes)]
    cfgs = []
    for c in per:
        sub = Config(**{**cfg.__dict__, "concurrency": c})
        if cfg.max_requests:
            sub.max_requests = max(1, cfg.max_requests * c // cfg.concurrency)
        cfgs.append(sub)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        raws = pool.map(_run_in_process, cfgs)
    return summarize(cfg, raws)


def _parse_header(s: str) -> tuple[str, str]:
    k, sep, v = s.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {s!r}")
    return k.strip(), v.strip()


def parse_args(argv: list[str] | None = None) -> tuple[Config, int]:
    p = argparse.ArgumentParser(description="bounded aiohttp load generator (SSE-aware)")
    p.add_argument("url")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds of measured load")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--body", default=None, help="request body (JSON text)")
    g.add_argument("--body-file", default=None)
    p.add_argument("-H", "--header", action="append", default=[], type=_parse_header)
    p.add_argument("--mode", choices=["auto", "sse", "plain"], default="auto", help="auto: sse if body has stream=true")
    p.add_argument("--method", default=None, help="default POST with a body, GET without")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    p.add_argument("--max-requests", type=int, default=0, help="stop after this many measured requests (0 = no cap)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests may finish after the deadline")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of unrecorded load before measuring")
    p.add_argument("--processes", type=int, default=1, help="split the workers over this many processes")
    a = p.parse_args(argv)
    if a.body_file:
        with open(a.body_file, "rb") as f:
            body = f.read()
    else:
        body = (a.body or "").encode()
    sse = a.mode == "sse"
    if a.mode == "auto" and body:
        try:
            sse = json.loads(body).get("stream") is True
        except (ValueError, AttributeError):
            sse = False
    headers = dict(a.header)
    if body and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    if a.concurrency < 1 or a.duration <= 0:
        p.error("concurrency must be >= 1 and duration > 0")
    cfg = Config(
        url=a.url,
        concurrency=a.concurrency,
        duration=a.duration,
        body=body,
        headers=headers,
        sse=sse,
        method=a.method or ("POST" if body else "GET"),
        timeout=a.timeout,
        max_requests=a.max_requests,
        grace=a.grace,
        warmup=a.warmup,
    )
    return cfg, a.processes


def main(argv: list[str] | None = None) -> None:
    cfg, processes = parse_args(argv)
    try:
        result = run(cfg, processes)
    except ValueError as exc:
        sys.exit(str(exc))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

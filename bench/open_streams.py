"""Hold N concurrent slow SSE streams through a target and measure its memory.

Point the target at a slow fake upstream (``fake_upstream.py --chunks 60
--chunk-delay-ms 2000``), then::

    python bench/open_streams.py http://127.0.0.1:18002/v1/chat/completions --streams 5000 \\
        --pid TARGET_PID --body '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

Streams are opened in batches (``--batch``); after each batch the tool waits
until every stream of the batch has its first token (or failed). If more than
``--max-fail-frac`` of the streams opened so far failed, the ramp stops early.
It then holds the streams for ``--hold`` seconds while sampling the resident
memory (VmRSS from /proc, summed over the process and its children) of
``--pid``, closes every stream, and prints JSON: streams requested /
established / still alive at the end of the hold, errors by kind, RSS before /
peak / after close, and the RSS growth per held stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

try:
    from bench.sse_load import LOCAL_HOSTS, TOKEN_RE, _parse_header, _percentiles
except ImportError:  # run as a script: bench/ is on sys.path
    from sse_load import LOCAL_HOSTS, TOKEN_RE, _parse_header, _percentiles  # type: ignore[no-redef]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _vmrss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """Resident memory (KiB) of ``pid`` plus all its descendants."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _vmrss_kb(p)
        stack.extend(_children(p))
    return total


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of ``pid`` plus its descendants (live ones)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack, seen = 0.0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(_children(p))
    return total


@dataclass
class Config:
    url: str
    streams: int = 1000
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    batch: int = 250
    batch_timeout: float = 30.0
    hold: float = 5.0
    max_fail_frac: float = 0.05
    connect_timeout: float = 30.0


@dataclass
class State:
    established: int = 0
    alive: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttfts: list[float] = field(default_factory=list)


async def _stream(session: aiohttp.ClientSession, cfg: Config, st: State, first: asyncio.Event) -> None:
    t0 = time.perf_counter()
    got_token = False
    try:
        async with session.post(cfg.url, data=cfg.body, headers=cfg.headers) as resp:
            if resp.status != 200:
                await resp.read()
                st.errors[f"status_{resp.status}"] += 1
                return
            tail = b""
            async for chunk in resp.content.iter_any():
                if not got_token:
                    buf = tail + chunk
                    if TOKEN_RE.search(buf):
                        got_token = True
                        st.ttfts.append(time.perf_counter() - t0)
                        st.established += 1
                        st.alive += 1
                        first.set()
                    else:
                        tail = buf[-48:]
            if got_token:
                st.completed += 1
            else:
                st.errors["no_token"] += 1
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        st.errors["timeout"] += 1
    except aiohttp.ClientError as exc:
        st.errors[type(exc).__name__] += 1
    except OSError as exc:
        st.errors[f"OSError_{exc.errno}"] += 1
    finally:
        if got_token:
            st.alive -= 1
        first.set()


async def run_async(cfg: Config) -> dict[str, Any]:
    st = State()
    rss_before = tree_rss_kb(cfg.pid) if cfg.pid else 0
    cpu_before = tree_cpu_s(cfg.pid) if cfg.pid else 0.0
    rss_peak = rss_before
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout)
    tasks: list[asyncio.Task[None]] = []
    t_start = time.perf_counter()
    stopped_early = False
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        opened = 0
        while opened < cfg.streams:
            n = min(cfg.batch, cfg.streams - opened)
            events = [asyncio.Event() for _ in range(n)]
            tasks.extend(asyncio.create_task(_stream(session, cfg, st, ev)) for ev in events)
            opened += n
            waits = [asyncio.create_task(ev.wait()) for ev in events]
            _, pending = await asyncio.wait(waits, timeout=cfg.batch_timeout)
            for w in pending:
                w.cancel()
            if pending:
                st.errors["first_token_timeout"] += len(pending)
            if cfg.pid:
                rss_peak = max(rss_peak, tree_rss_kb(cfg.pid))
            failed = sum(st.errors.values())
            if failed > cfg.max_fail_frac * opened:
                stopped_early = True
                break
        open_time = time.perf_counter() - t_start
        hold_end = time.perf_counter() + cfg.hold
        while time.perf_counter() < hold_end:
            await asyncio.sleep(0.25)
            if cfg.pid:
                rss_peak = max(rss_peak, tree_rss_kb(cfg.pid))
        held = st.alive
        cpu_held = tree_cpu_s(cfg.pid) if cfg.pid else 0.0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    rss_after = tree_rss_kb(cfg.pid) if cfg.pid else 0
    growth = rss_peak - rss_before
    return {
        "url": cfg.url,
        "streams_requested": cfg.streams,
        "streams_opened": opened,
        "established": st.established,
        "held_at_end_of_hold": held,
        "completed_before_close": st.completed,
        "stopped_early": stopped_early,
        "errors": sum(st.errors.values()),
        "error_kinds": dict(st.errors),
        "open_time_s": round(open_time, 2),
        "hold_s": cfg.hold,
        "ttft_ms": _percentiles(st.ttfts),
        "pid": cfg.pid or None,
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_peak_mb": round(rss_peak / 1024, 1),
        "rss_after_close_mb": round(rss_after / 1024, 1),
        "rss_per_stream_kb": round(growth / held, 2) if held else None,
        "cpu_s_open_and_hold": round(cpu_held - cpu_before, 2) if cfg.pid else None,
    }


def run(cfg: Config) -> dict[str, Any]:
    host = urlsplit(cfg.url).hostname or ""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"refusing non-local target {host!r}: load tests must target 127.0.0.1")
    try:
        import uvloop

        return uvloop.run(run_async(cfg))
    except ImportError:  # pragma: no cover - optional
        return asyncio.run(run_async(cfg))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="hold N concurrent slow SSE streams and measure target RSS")
    p.add_argument("url")
    p.add_argument("-n", "--streams", type=int, default=1000)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--body")
    g.add_argument("--body-file")
    p.add_argument("-H", "--header", action="append", default=[], type=_parse_header)
    p.add_argument("--pid", type=int, default=0, help="target process whose RSS (with children) is sampled")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--batch-timeout", type=float, default=30.0, help="max seconds for a batch to get first tokens")
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--max-fail-frac", type=float, default=0.05)
    a = p.parse_args(argv)
    if a.body_file:
        with open(a.body_file, "rb") as f:
            body = f.read()
    else:
        body = a.body.encode()
    headers = dict(a.header)
    headers.setdefault("Content-Type", "application/json")
    cfg = Config(
        url=a.url,
        streams=a.streams,
        body=body,
        headers=headers,
        pid=a.pid,
        batch=a.batch,
        batch_timeout=a.batch_timeout,
        hold=a.hold,
        max_fail_frac=a.max_fail_frac,
    )
    try:
        result = run(cfg)
    except ValueError as exc:
        sys.exit(str(exc))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

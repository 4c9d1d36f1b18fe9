"""CPU per call of the gateway's own Python work, measured in process: steadier than bench/run.py.

The ASGI app (``stepplan.app.create_app``, the same object uvicorn serves) is driven directly: no
client socket, no uvicorn, no load generator competing for the CPU. The upstream is the real fake
(``bench/fake_upstream.py``) over loopback. ``--calls`` calls run at ``--concurrency`` C, after a
warm-up; the result is the event-loop thread's CPU time per call. Compare trees by running them
alternately (``PYTHONPATH=<tree>``), several rounds each::

    PYTHONPATH=<tree> .venv/bin/python bench/inproc.py --calls 4000 --concurrency 32 --scenario json

``--profile FILE`` writes a cProfile (thread CPU time) of the measured calls. ``--garbage`` switches
the cycle collector off, runs the calls, then lists what the calls left as cyclic garbage (type and
count per call): a per-call reference cycle costs collector time on every call, and a per-call
object such as a ``Connection`` shows work that should have been reused. Deterministic: it does
not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
MODEL = "step-3.5-flash"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in a few words."}]
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "json": ("/step_plan/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 64}),
    "sse": ("/step_plan/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 64,
                                               "stream": True, "stream_options": {"include_usage": True}}),
    "anthropic_sse": ("/step_plan/v1/messages", {"model": MODEL, "max_tokens": 64, "system": MESSAGES[0]["content"],
                                                 "messages": [MESSAGES[1]], "stream": True}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"the fake upstream did not listen on {port}")


def cli(cfg: Path, *argv: str) -> str:
    env = {**os.environ, "STEPPLAN_CONFIG": str(cfg)}
    out = subprocess.run([sys.executable, "-m", "stepplan", *argv], env=env, capture_output=True, text=True,
                         timeout=120, cwd=cfg.parent)  # not the checkout: PYTHONPATH picks the tree
    if out.returncode != 0:
        raise SystemExit(f"stepplan {' '.join(argv)} failed: {out.stderr.strip()[-500:]}")
    return out.stdout


def set_up(tmp: Path, upstream_port: int) -> tuple[Path, str]:
    cfg = tmp / "stepplan.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp}/bench.db"\n[upstreams.fake]\nprotocol = "openai"\n'
                   f'base_url = "http://127.0.0.1:{upstream_port}/v1"\n[models."{MODEL}"]\nupstream = "fake"\n')
    cli(cfg, "accounts", "create", "bench")
    cli(cfg, "subscribe", "bench", "--plan", "flash-max")
    key = json.loads(cli(cfg, "keys", "create", "--account", "bench", "--json").strip().splitlines()[-1])["key"]
    return cfg, str(key)


async def drive(cfg: Path, key: str, scenario: str, calls: int, concurrency: int, warmup: int,
                profile: str | None, garbage: bool) -> dict[str, Any]:
    os.environ["STEPPLAN_CONFIG"] = str(cfg)
    from stepplan.app import create_app
    from stepplan.settings import load_settings

    path, body = SCENARIOS[scenario]
    raw = json.dumps(body).encode()
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(raw)).encode()),
               (b"user-agent", b"bench-inproc"), (b"accept", b"*/*")]
    app = create_app(load_settings())
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"start-up failed: {started}")
    failures: list[str] = []

    async def one() -> None:
        sent = False
        status = 0
        errors: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status != 200:
                errors.append(message.get("body", b""))

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {}}
        await app(scope, receive, send)
        if status != 200:
            failures.append(f"{status} {b''.join(errors)[:300]!r}")

    async def run(n: int) -> None:
        async def worker(k: int) -> None:
            for _ in range(k):
                await one()
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))

    await run(warmup)
    total = (calls // concurrency) * concurrency
    if garbage:
        gc.collect()
        gc.disable()
    prof = cProfile.Profile(time.thread_time_ns, 1e-9) if profile else None
    if prof is not None:
        prof.enable()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    await run(calls)
    cpu1, wall1 = time.thread_time(), time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    result: dict[str, Any] = {"scenario": scenario, "calls": total, "concurrency": concurrency,
                              "failures": len(failures), "cpu_us_per_call": round((cpu1 - cpu0) / total * 1e6, 1),
                              "wall_us_per_call": round((wall1 - wall0) / total * 1e6, 1)}
    if failures:
        result["first_failure"] = failures[0]
    if garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        result["cyclic_garbage_per_call"] = {k: round(v / total, 2) for k, v in kinds.most_common(15)
                                             if v / total >= 0.01}
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="json")
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=int, default=256)
    p.add_argument("--profile", default=None, help="write a cProfile of the measured calls to this file")
    p.add_argument("--garbage", action="store_true", help="list the cyclic garbage the calls leave")
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port), "--chunks", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        with tempfile.TemporaryDirectory(prefix="stepplan-inproc-") as tmp:
            cfg, key = set_up(Path(tmp), port)
            result = asyncio.run(drive(cfg, key, a.scenario, a.calls, a.concurrency, a.warmup, a.profile, a.garbage))
    finally:
        fake.terminate()
        fake.wait(10)
    print(json.dumps(result))
    if result["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

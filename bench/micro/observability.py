"""CPU per call of the observability hooks, in process: what a settled call costs with metrics
on vs off (the call log line is off in both, so the difference is the metrics), the ``overhead``
hook, and the once-a-second flush; in prometheus-client's single-process and multiprocess modes.

    .venv/bin/python bench/micro/observability.py [--calls 200000]

For comparison it also times the plain prometheus-client calls the hot path avoids
(``child.inc()``, ``child.observe()``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any


def fake_call(model: str, served: str, stream: bool) -> Any:
    usage = SimpleNamespace(input=1200, cache_read=3000, cache_write=0, output=350, reasoning=120, known=True)
    call = SimpleNamespace(
        spec=SimpleNamespace(id=model), served_model=SimpleNamespace(id=served), protocol="openai",
        req=SimpleNamespace(stream=stream), t0=time.perf_counter() - 0.8, upstream_s=0.75, error_code=None,
        key=SimpleNamespace(account_name="acme", key_id=7), reservation=SimpleNamespace(data={"cost": 123456}),
        route=SimpleNamespace(reason=None, score=None), trace_id="abc", finish="end_turn", settlement=None)
    return call, usage


def run(calls: int) -> None:
    from stepplan.observability.calls import CallObserver
    from stepplan.observability.metrics import Metrics

    logging.getLogger("stepplan.call").setLevel(logging.WARNING)  # the log line is not what is measured
    models = ["step-3.5-flash", "step-3.7-flash", "deepseek-v4-pro", "step-router-v1"]
    metrics = Metrics(models, lambda _m: "upstream")
    on, off = CallObserver(metrics), CallObserver(None)
    work = [fake_call(models[i % 4], models[i % 3], bool(i % 2)) for i in range(64)]
    mode = "multiprocess" if metrics.multiprocess else "single-process"

    def timed(observer: CallObserver) -> float:
        t = time.perf_counter()
        for i in range(calls):
            call, usage = work[i & 63]
            observer.settled(call, usage, "ok", call.t0 + 0.1, call.t0 + 0.8)
            observer.overhead(call, 0.0003)
        return (time.perf_counter() - t) / calls * 1e6

    timed(on), timed(off)  # warm up, bind the series
    rounds = [(timed(off), timed(on)) for _ in range(5)]
    off_us = sorted(r[0] for r in rounds)[2]
    on_us = sorted(r[1] for r in rounds)[2]
    t = time.perf_counter()
    metrics.sync()
    sync_ms = (time.perf_counter() - t) * 1000
    child = metrics.requests.labels("a", "b", "c", "d", "e")
    hist = metrics.duration.labels("chat", "u", "a", "b", "")
    t = time.perf_counter()
    for _ in range(calls):
        child.inc()
    inc_us = (time.perf_counter() - t) / calls * 1e6
    t = time.perf_counter()
    for _ in range(calls):
        hist.observe(0.8)
    obs_us = (time.perf_counter() - t) / calls * 1e6
    print(f"| {mode} | {off_us:.2f} | {on_us:.2f} | {on_us - off_us:+.2f} | {sync_ms:.2f} | {inc_us:.2f} "
          f"| {obs_us:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        run(a.calls)
        return
    print("| prometheus-client mode | settled+overhead, metrics off (µs/call) | metrics on (µs/call) | added "
          "(µs/call) | one flush of all series (ms) | plain `inc()` (µs) | plain `observe()` (µs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root
    subprocess.run([sys.executable, __file__, "--child", "--calls", str(a.calls)], env=env, check=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, __file__, "--child", "--calls", str(a.calls)],
                       env={**env, "PROMETHEUS_MULTIPROC_DIR": d}, check=True)


if __name__ == "__main__":
    main()

"""Measure the embedded model through a real gateway: load time, TTFT and tokens per second.

    .venv/bin/python bench/local_engine.py [--runs 5] [--tokens 128] [--n-threads N]

Starts ``stepplan serve`` with a config whose only upstream is ``protocol = "local"``,
then streams chat completions with the ``openai`` SDK. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a long story about a lighthouse keeper and a storm."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_once(client: openai.OpenAI, tokens: int, prefix: str = "") -> dict[str, float]:
    """One streamed request. A new ``prefix`` defeats llama.cpp's KV-cache prefix reuse,
    so the whole prompt is evaluated; the same prompt twice re-evaluates one token."""
    t0 = time.perf_counter()
    first = last = None
    usage = None
    for chunk in client.chat.completions.create(
            model="step-3.5-flash", messages=[{"role": "user", "content": prefix + PROMPT}], max_tokens=tokens,
            temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            usage = chunk.usage
    assert first is not None and last is not None and usage is not None
    n = usage.completion_tokens
    return {"ttft_ms": (first - t0) * 1000, "total_s": time.perf_counter() - t0, "tokens": n,
            "prompt_tokens": usage.prompt_tokens,
            "tok_s": (n - 1) / (last - first) if last > first else 0.0}


def rss_mb(pid: int) -> float:
    """Resident memory of the server process and its children (uvicorn workers)."""
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--n-threads", type=int, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stepplan-local-bench-"))
    threads = f"n_threads = {args.n_threads}\n" if args.n_threads else ""
    cfg = tmp / "stepplan.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp}/db.sqlite"\n[billing]\nenabled = false\n'
                   f'[upstreams.local]\nprotocol = "local"\n{threads}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPLAN_")} | {"PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "stepplan", "--config", str(cfg)]
    subprocess.run([*cli, "accounts", "create", "bench"], env=env, check=True, capture_output=True)
    key = json.loads(subprocess.run([*cli, "keys", "create", "--account", "bench", "--json"], env=env, check=True,
                                    capture_output=True, text=True).stdout)["key"]
    port = free_port()
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/step_plan/v1", api_key=key, timeout=300,
                               max_retries=0)
        cold = stream_once(client, args.tokens)  # right after start-up: may wait for the preload
        warm = [stream_once(client, args.tokens) for _ in range(args.runs)]
        fresh = [stream_once(client, 8, f"Request {i} of {args.runs}. ") for i in range(args.runs)]
        m = re.search(r"loaded from .* in ([0-9.]+)s \(n_ctx=(\d+), n_threads=(\d+)\)", log.read_text())
        result = {
            "model_load_s": float(m.group(1)) if m else None,
            "n_threads": int(m.group(3)) if m else None,
            "cold_first_request": {k: round(v, 2) for k, v in cold.items()},
            "warm_runs": args.runs,
            "tokens_per_run": statistics.median(r["tokens"] for r in warm),
            "ttft_ms_p50_same_prompt": round(statistics.median(r["ttft_ms"] for r in warm), 1),
            "ttft_ms_p50_new_prompt": round(statistics.median(r["ttft_ms"] for r in fresh), 1),
            "prompt_tokens": fresh[0]["prompt_tokens"],
            "tok_s_p50": round(statistics.median(r["tok_s"] for r in warm), 1),
            "total_s_p50": round(statistics.median(r["total_s"] for r in warm), 2),
            "server_rss_mb": rss_mb(proc.pid),
            "load_average": os.getloadavg(),
        }
        print(json.dumps(result, indent=2))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


if __name__ == "__main__":
    main()

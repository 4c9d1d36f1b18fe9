"""Paired A/B: two source trees of stepplan served side by side, under the same load, at the same time.

On a shared 2-core VM the same tree measured twice a few minutes apart differs by 15-30 % in CPU per
call (other tenants, frequency changes), so "before, then after" cannot resolve a few per cent. Here both
gateways run *at once*, pinned to the same CPU, each under its own load generator with the same
concurrency: whatever slows the machine slows both alike, and the ratio of their CPU per call is what
is compared. The fake upstream, the load generators and this script run on the other CPU(s).

    .venv/bin/python bench/ab.py --a before=/path/to/old/tree --b after=. \\
        --scenarios openai_json,openai_sse,anthropic_sse --rounds 5 --duration 6

Each tree is imported with ``PYTHONPATH=<tree>`` (this venv's dependencies), one worker, metering on,
a fresh SQLite database each. Per round and scenario it prints each side's requests per second and CPU
milliseconds per call, and the ratio b/a; at the end, the median ratio per scenario. A ratio of 1.03
means b costs 3 % more CPU per call than a.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from open_streams import tree_cpu_s  # noqa: E402

JSON_SCENARIOS = ("openai_json", "responses_json")


def start_side(name: str, tree: Path, tmp: Path, upstream_port: int, cpus: set[int]) -> tuple[run.Proc, int, str]:
    """A gateway from ``tree`` on ``cpus``: its config, account, key, and the server."""
    exe = run.stepplan_exe()
    if exe is None:
        raise SystemExit("no `stepplan` executable next to this Python (pip install -e .)")
    home = tmp / name
    home.mkdir()
    cfg = home / "stepplan.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{home}/bench.db"\n[upstreams.fake]\nprotocol = "openai"\n'
                   f'base_url = "http://127.0.0.1:{upstream_port}/v1"\n[models."{run.MODEL}"]\nupstream = "fake"\n')
    env = {"PYTHONPATH": str(tree), "STEPPLAN_CONFIG": str(cfg)}
    os.environ.update(env)  # the CLI set-up below runs the same tree
    try:
        key = run.stepplan_setup(_Env(home), exe, cfg)
    finally:
        for k in env:
            os.environ.pop(k, None)
    port = run.free_port()
    cmd = [str(exe), "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    run.Proc.target_cpus = cpus
    proc = run.Proc(name, cmd, home, env=env, target=True)
    run.wait_healthy(proc, port, "/healthz", 60)
    return proc, port, key


class _Env:
    """What ``run.stepplan_setup`` reads from bench/run.py's Env."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.args = argparse.Namespace(stepplan_plan="flash-max")


def load(scenario: str, port: int, key: str, conc: int, duration: float, tmp: Path) -> dict[str, Any]:
    body = run.bodies()[scenario]
    headers = run._keyed_headers(key)[scenario]
    path = "/step_plan/v1/messages" if scenario.startswith("anthropic") else (
        "/step_plan/v1/responses" if scenario.startswith("responses") else "/step_plan/v1/chat/completions")
    url = f"http://127.0.0.1:{port}{path}"
    if scenario in JSON_SCENARIOS and shutil.which("wrk"):
        return run.run_wrk(url, conc, duration, body, headers, tmp)
    return run.run_sse_load(url, conc, duration, body, headers, 1, grace=10.0)


def paired_round(sides: list[tuple[str, run.Proc, int, str]], scenario: str, conc: int, duration: float,
                 tmp: Path) -> dict[str, dict[str, Any]]:
    """Both loads at once; each side's CPU per call over the same wall-clock window."""
    results: dict[str, dict[str, Any]] = {}
    cpu0 = {name: tree_cpu_s(proc.pid) for name, proc, _, _ in sides}

    def drive(name: str, port: int, key: str) -> None:
        results[name] = load(scenario, port, key, conc, duration, tmp)

    threads = [threading.Thread(target=drive, args=(name, port, key)) for name, _, port, key in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, proc, _, _ in sides:
        res = results[name]
        done = (res.get("requests") or 0) + (res.get("errors") or 0)
        res["cpu_ms_per_req"] = (tree_cpu_s(proc.pid) - cpu0[name]) * 1000 / done if done else None
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="NAME=TREE: the reference (e.g. before=/tmp/old)")
    p.add_argument("--b", required=True, help="NAME=TREE: the candidate (e.g. after=.)")
    p.add_argument("--scenarios", default="openai_json,openai_sse,anthropic_sse",
                   help=f"comma list from {','.join(run.SCENARIOS)}")
    p.add_argument("--concurrency", type=int, default=16, help="per side")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per paired run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    sides_arg = [a.a.split("=", 1), a.b.split("=", 1)]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, set(cpus[1:]))  # inherited by the fake upstream and the load generators
    else:
        print("one CPU: the gateways share it with the load (ratios are still paired, but noisier)",
              file=sys.stderr)
    scenarios = a.scenarios.split(",")
    run.raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="stepplan-ab-"))
    out: dict[str, Any] = {"command": "bench/ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           "rounds": []}
    try:
        fake_port = run.free_port()
        fake = run.Proc("fake", [run.PY, str(BENCH / "fake_upstream.py"), "--port", str(fake_port),
                                 "--chunks", str(a.chunks)], tmp)
        run.wait_healthy(fake, fake_port, "/healthz", 20)
        sides = []
        for name, tree in sides_arg:
            proc, port, key = start_side(name, Path(tree).resolve(), tmp, fake_port, {cpus[0]})
            sides.append((name, proc, port, key))
        for sc in scenarios:  # warm both (caches, connections, leases)
            paired_round(sides, sc, a.concurrency, 1.0, tmp)
        ratios: dict[str, list[float]] = {sc: [] for sc in scenarios}
        for r in range(a.rounds):
            order = sides if r % 2 == 0 else sides[::-1]  # which load starts first alternates
            for sc in scenarios:
                res = paired_round(order, sc, a.concurrency, a.duration, tmp)
                ra, rb = res[sides_arg[0][0]], res[sides_arg[1][0]]
                ratio = rb["cpu_ms_per_req"] / ra["cpu_ms_per_req"]
                ratios[sc].append(ratio)
                out["rounds"].append({"round": r, "scenario": sc, **res})
                print(f"round {r} {sc:15} " + "  ".join(
                    f"{n}: {x['req_per_s']:7.0f} req/s {x['cpu_ms_per_req']:.3f} CPU ms/call"
                    for n, x in ((sides_arg[0][0], ra), (sides_arg[1][0], rb))) + f"  b/a {ratio:.3f}", flush=True)
        out["median_ratio"] = {sc: statistics.median(v) for sc, v in ratios.items()}
        for sc, v in ratios.items():
            print(f"{sc:15} CPU per call {sides_arg[1][0]}/{sides_arg[0][0]}: median {statistics.median(v):.3f} "
                  f"(rounds {', '.join(f'{x:.3f}' for x in v)})")
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        run.Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

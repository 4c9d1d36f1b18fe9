"""Side-by-side benchmark: fake upstream direct, the Python pass-through, LiteLLM and stepplan.

One command::

    .venv/bin/python bench/run.py [--quick] [--targets direct,passthrough,litellm,stepplan] [--duration S]

It starts a fast fake upstream (``bench/fake_upstream.py``) and a slow one (for
the open-streams test), then for each target in turn: starts it on a free
127.0.0.1 port, checks one request of every scenario, runs the same load
against it, stops it, restarts it against the slow fake and holds many open
streams. Every process it starts is stopped (by its process group id) at the end.

Scenarios (identical settings for every target):

* ``openai_json``   -- non-streaming chat completions (wrk if installed, else sse_load.py)
* ``openai_sse``    -- streaming chat completions with ``stream_options.include_usage``
                       (sse_load.py: TTFT and full-stream time)
* ``anthropic_sse`` -- Anthropic ``/v1/messages`` streaming client. On stepplan and LiteLLM the
                       upstream is the OpenAI fake (so it is translated); ``direct`` and ``passthrough``
                       forward to the fake's native Anthropic endpoint (no translation).
* ``responses_json`` / ``responses_sse`` -- the same call on the OpenAI Responses API
                       (``/step_plan/v1/responses``, ``store: false`` like Codex), non-streaming and
                       streaming; stepplan only (the other targets do not serve it). Compare with
                       ``openai_json`` / ``openai_sse`` on the same run.
* ``open_streams``  -- N concurrent slow streams; how many are held, RSS growth per stream.

Results: a markdown table on stdout, raw JSON in ``bench/results/latest.json`` and a
section between ``<!-- bench:run.py:start -->`` and ``<!-- bench:run.py:end -->`` in
``docs/performance.md``. ``--quick`` is a smoke run (short, fewer scenarios, no LiteLLM)
that writes ``bench/results/quick.json`` and leaves the docs alone unless ``--docs`` is given.

LiteLLM comes from a separate venv (``bench/litellm_setup.sh``, default ``bench/.litellm-venv``).
stepplan is started as ``stepplan serve --config CONFIG --host 127.0.0.1 --port PORT --workers 1``
after ``stepplan accounts create``, ``subscribe`` and ``keys create --json``; any of those failing
skips the target with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from open_streams import tree_cpu_s, tree_rss_kb  # noqa: E402

PY = sys.executable
MODEL = "step-3.5-flash"
LITELLM_KEY = "sk-bench-master"
DOC_START = "<!-- bench:run.py:start -->"
DOC_END = "<!-- bench:run.py:end -->"
SCENARIOS = ("openai_json", "openai_sse", "anthropic_sse", "responses_json", "responses_sse")
ALL_TARGETS = ("direct", "passthrough", "litellm", "stepplan")
# Run only when named in --targets: stepplan with metrics off (STEPPLAN_METRICS=0), for the cost of metrics.
EXTRA_TARGETS = ("stepplan-nometrics",)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in a few words."},
]
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "True",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
}


def bodies() -> dict[str, bytes]:
    openai = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64}
    stream = {**openai, "stream": True, "stream_options": {"include_usage": True}}
    anthropic = {
        "model": MODEL,
        "max_tokens": 64,
        "system": MESSAGES[0]["content"],
        "messages": [MESSAGES[1]],
        "stream": True,
    }
    responses = {
        "model": MODEL,
        "instructions": MESSAGES[0]["content"],
        "input": [{"role": "user", "content": MESSAGES[1]["content"]}],
        "max_output_tokens": 64,
        "store": False,
    }
    enc = json.dumps
    return {
        "openai_json": enc(openai).encode(),
        "openai_sse": enc(stream).encode(),
        "anthropic_sse": enc(anthropic).encode(),
        "responses_json": enc(responses).encode(),
        "responses_sse": enc({**responses, "stream": True}).encode(),
    }


def log(msg: str) -> None:
    print(f"[run.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes
class Proc:
    """A child process in its own session; stopped by signalling its process group (its own pid)."""

    registry: list[Proc] = []
    target_cpus: set[int] | None = None  # --pin: the measured target's CPUs (the rest run elsewhere)

    def __init__(self, name: str, cmd: list[str], logdir: Path, env: dict[str, str] | None = None,
                 target: bool = False) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=str(ROOT),
            start_new_session=True,
            preexec_fn=_pin_to(Proc.target_cpus) if target and Proc.target_cpus else None,
        )
        self.pid = self.popen.pid
        Proc.registry.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.alive():
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)
                try:
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # the leader is gone; make sure nothing of its group survives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.registry):
            p.stop()


def _pin_to(cpus: set[int]) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout=30.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def wait_healthy(proc: Proc, port: int, path: str, timeout: float) -> float:
    """Poll GET path until 200; returns seconds taken. Raises RuntimeError if it never gets there."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if http_request(port, "GET", path, timeout=2)[0] == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not healthy on {path} after {timeout:.0f}s:\n{proc.tail()}")


class RssSampler:
    """Samples the tree RSS of a pid in a thread; ``peak_kb`` after ``stop()``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak_kb = pid, interval, tree_rss_kb(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak_kb


# --------------------------------------------------------------------------- targets
@dataclass
class Target:
    name: str
    port: int
    proc: Proc
    paths: dict[str, str]
    headers: dict[str, dict[str, str]]
    start_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.paths[scenario]}"


class SkipTarget(Exception):
    """The target cannot be started; the message says why."""


@dataclass
class Env:
    args: argparse.Namespace
    tmp: Path
    fast_port: int
    slow_port: int
    fast: Proc
    slow: Proc
    stepplan_key: str | None = None
    stepplan_db_ready: bool = False


OPENAI_PATHS = {"openai_json": "/v1/chat/completions", "openai_sse": "/v1/chat/completions"}


def _plain_headers() -> dict[str, dict[str, str]]:
    ct = {"Content-Type": "application/json"}
    return {
        "openai_json": ct,
        "openai_sse": ct,
        "anthropic_sse": {**ct, "anthropic-version": "2023-06-01", "x-api-key": "unused"},
    }


def _keyed_headers(key: str) -> dict[str, dict[str, str]]:
    ct = {"Content-Type": "application/json"}
    bearer = {**ct, "Authorization": f"Bearer {key}"}
    return {
        "openai_json": bearer,
        "openai_sse": bearer,
        "anthropic_sse": {**ct, "x-api-key": key, "anthropic-version": "2023-06-01"},
        "responses_json": bearer,
        "responses_sse": bearer,
    }


def start_direct(env: Env, slow: bool) -> Target:
    proc = env.slow if slow else env.fast
    port = env.slow_port if slow else env.fast_port
    t = Target("direct", port, proc, {**OPENAI_PATHS, "anthropic_sse": "/v1/messages"}, _plain_headers())
    t.notes.append("anthropic_sse is the fake's native Anthropic stream (no translation)")
    return t


def start_passthrough(env: Env, slow: bool) -> Target:
    up = env.slow_port if slow else env.fast_port
    port = free_port()
    cmd = [PY, str(BENCH / "passthrough.py"), "--upstream", f"http://127.0.0.1:{up}", "--port", str(port)]
    proc = Proc("passthrough-slow" if slow else "passthrough", cmd, env.tmp, target=True)
    try:
        secs = wait_healthy(proc, port, "/healthz", 20)
    except RuntimeError as exc:
        proc.stop()
        raise SkipTarget(str(exc)) from None
    t = Target("passthrough", port, proc, {**OPENAI_PATHS, "anthropic_sse": "/v1/messages"}, _plain_headers(), secs)
    t.notes.append("anthropic_sse forwards the fake's native Anthropic stream (no translation)")
    return t


def litellm_venv(env: Env) -> Path:
    return Path(env.args.litellm_venv).resolve()


def start_litellm(env: Env, slow: bool) -> Target:
    venv = litellm_venv(env)
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise SkipTarget(f"{exe} not found; run bench/litellm_setup.sh (or pass --litellm-venv)")
    up = env.slow_port if slow else env.fast_port
    cfg = env.tmp / f"litellm{'-slow' if slow else ''}.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{up}/v1\n"
        "      api_key: dummy\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = Proc("litellm-slow" if slow else "litellm", cmd, env.tmp, env=LITELLM_ENV, target=True)
    try:
        secs = wait_healthy(proc, port, "/health/liveliness", 120)
    except RuntimeError as exc:
        proc.stop()
        raise SkipTarget(str(exc)) from None
    return Target(
        "litellm", port, proc, {**OPENAI_PATHS, "anthropic_sse": "/v1/messages"}, _keyed_headers(LITELLM_KEY), secs
    )


def stepplan_exe() -> Path | None:
    cand = Path(PY).parent / "stepplan"
    if cand.exists():
        return cand
    found = shutil.which("stepplan")
    return Path(found) if found else None


def stepplan_config(env: Env, slow: bool) -> Path:
    up = env.slow_port if slow else env.fast_port
    cfg = env.tmp / f"stepplan{'-slow' if slow else ''}.toml"
    cfg.write_text(
        "[database]\n"
        f'url = "sqlite:///{env.tmp}/bench.db"\n'
        "[upstreams.fake]\n"
        'protocol = "openai"\n'
        f'base_url = "http://127.0.0.1:{up}/v1"\n'
        f'[models."{MODEL}"]\n'
        'upstream = "fake"\n'
    )
    return cfg


def _stepplan_cli(exe: Path, cfg: Path, argv: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run a stepplan CLI command with the config; tries the flag before and after the subcommand."""
    env = {**os.environ, "STEPPLAN_CONFIG": str(cfg)}
    last: subprocess.CompletedProcess[str] | None = None
    for cmd in ([str(exe), "--config", str(cfg), *argv], [str(exe), *argv, "--config", str(cfg)], [str(exe), *argv]):
        last = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp), timeout=120)
        if last.returncode != 2:  # 2 = usage error (e.g. --config not accepted there)
            return last
    assert last is not None
    return last


def stepplan_setup(env: Env, exe: Path, cfg: Path) -> str:
    plan = env.args.stepplan_plan
    steps = [
        ["accounts", "create", "bench"],
        *([["subscribe", "bench", "--plan", plan]] if plan else []),
        ["keys", "create", "--account", "bench", "--json"],
    ]
    out = ""
    for argv in steps:
        r = _stepplan_cli(exe, cfg, argv, env.tmp)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip()[-800:]
            raise SkipTarget(f"`stepplan {' '.join(argv)}` failed (rc {r.returncode}): {msg}")
        out = r.stdout
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                key = json.loads(line).get("key")
                if isinstance(key, str) and key:
                    return key
    with contextlib.suppress(ValueError):
        key = json.loads(out).get("key")
        if isinstance(key, str) and key:
            return key
    raise SkipTarget(f'`stepplan keys create --json` printed no {{"key": ...}}: {out.strip()[-300:]!r}')


def start_stepplan_nometrics(env: Env, slow: bool) -> Target:
    return start_stepplan(env, slow, metrics=False)


def start_stepplan(env: Env, slow: bool, metrics: bool = True) -> Target:
    exe = stepplan_exe()
    if exe is None:
        raise SkipTarget("no `stepplan` executable next to this Python or on PATH (pip install -e .)")
    cfg = stepplan_config(env, slow)
    if env.stepplan_key is None:
        env.stepplan_key = stepplan_setup(env, exe, cfg)
    port = free_port()
    cmd = [str(exe), "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    name = "stepplan" if metrics else "stepplan-nometrics"
    proc = Proc(f"{name}-slow" if slow else name, cmd, env.tmp,
                env={"STEPPLAN_CONFIG": str(cfg), "STEPPLAN_METRICS": "1" if metrics else "0"}, target=True)
    try:
        secs = wait_healthy(proc, port, "/healthz", 60)
    except RuntimeError as exc:
        proc.stop()
        raise SkipTarget(str(exc)) from None
    paths = {
        "openai_json": "/step_plan/v1/chat/completions",
        "openai_sse": "/step_plan/v1/chat/completions",
        "anthropic_sse": "/step_plan/v1/messages",
        "responses_json": "/step_plan/v1/responses",
        "responses_sse": "/step_plan/v1/responses",
    }
    return Target(name, port, proc, paths, _keyed_headers(env.stepplan_key), secs)


STARTERS = {
    "direct": start_direct,
    "passthrough": start_passthrough,
    "litellm": start_litellm,
    "stepplan": start_stepplan,
    "stepplan-nometrics": start_stepplan_nometrics,
}


# --------------------------------------------------------------------------- load
def check_scenario(t: Target, scenario: str, body: bytes, probes: int) -> dict[str, Any]:
    """Send ``probes`` sequential requests; verify the first one; collect the overhead header."""
    if scenario not in t.paths:
        return {"ok": False, "why": "not served by this target"}
    overheads: list[float] = []
    for i in range(probes):
        status, headers, data = http_request(t.port, "POST", t.paths[scenario], body, t.headers[scenario])
        if i == 0:
            if status != 200:
                return {"ok": False, "why": f"HTTP {status}: {data[:300]!r}"}
            if scenario.endswith("_sse") and not any(m in data[-64:] for m in (b"[DONE]", b"message_stop",
                                                                                 b'"response.completed"}')):
                return {"ok": False, "why": f"stream did not finish properly: ...{data[-200:]!r}"}
        if "x-stepplan-overhead-ms" in headers:
            with contextlib.suppress(ValueError):
                overheads.append(float(headers["x-stepplan-overhead-ms"]))
    overheads.sort()
    return {"ok": True, "overhead_ms_p50_c1": overheads[len(overheads) // 2] if overheads else None}


def _wrk_script(tmp: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append(
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,'
        '\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,'
        '\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"max\\":%d}\\n",'
        " summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,"
        " latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))\n"
        "end"
    )
    path = tmp / f"wrk-{abs(hash((body, tuple(headers.items()))))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, conc: int, duration: float, body: bytes, headers: dict[str, str], tmp: Path) -> dict[str, Any]:
    script = _wrk_script(tmp, body, headers)
    threads = max(1, min(2, conc))
    cmd = ["wrk", f"-t{threads}", f"-c{conc}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "-s", str(script)]
    r = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if r.returncode != 0 or line is None:
        return {"tool": "wrk", "failed": f"wrk rc {r.returncode}: {(r.stderr or r.stdout)[-300:]}"}
    w = json.loads(line[len("WRKJSON ") :])
    secs = w["duration_us"] / 1e6
    errors = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    ok = w["requests"] - w["status"]
    return {
        "tool": "wrk",
        "concurrency": conc,
        "requests": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "req_per_s": round(ok / secs, 2) if secs else 0.0,
        "latency_ms": {q: round(w[q] / 1000, 3) for q in ("p50", "p90", "p99", "max")},
        "ttft_ms": None,
    }


def run_sse_load(
    url: str, conc: int, duration: float, body: bytes, headers: dict[str, str], processes: int, grace: float = 30.0
) -> dict[str, Any]:
    cmd = [PY, str(BENCH / "sse_load.py"), url, "-c", str(conc), "-d", str(duration), "--body", body.decode()]
    cmd += ["--timeout", "60", "--grace", str(grace), "--processes", str(processes)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if r.returncode != 0:
        return {"tool": "sse_load", "failed": f"sse_load rc {r.returncode}: {r.stderr[-300:]}"}
    res = json.loads(r.stdout)
    res["tool"] = "sse_load"
    return res


def measure(env: Env, t: Target, scenario: str, conc: int, body: bytes) -> dict[str, Any]:
    a = env.args
    url, headers = t.url(scenario), t.headers[scenario]
    use_wrk = scenario == "openai_json" and a.wrk

    if a.warmup > 0:  # warm connections and caches at a moderate concurrency, then let the target go idle
        if use_wrk:
            run_wrk(url, min(conc, 32), a.warmup, body, headers, env.tmp)
        else:
            run_sse_load(url, min(conc, 32), a.warmup, body, headers, 1, grace=5.0)
    best: dict[str, Any] | None = None
    all_rps: list[float] = []
    for _ in range(a.repeat):  # best of N: other work on a shared machine only ever makes a run slower
        settle = wait_idle(t.pid)
        sampler = RssSampler(t.pid)
        cpu0 = tree_cpu_s(t.pid)
        if use_wrk:
            res = run_wrk(url, conc, a.duration, body, headers, env.tmp)
        else:
            res = run_sse_load(url, conc, a.duration, body, headers, a.load_processes)
        cpu = tree_cpu_s(t.pid) - cpu0
        res["rss_peak_mb"] = round(sampler.stop() / 1024, 1)
        res["settle_s"] = round(settle, 1)
        done = (res.get("requests") or 0) + (res.get("errors") or 0)
        res["cpu_ms_per_req"] = round(cpu * 1000 / done, 3) if done else None
        all_rps.append(res.get("req_per_s") or 0.0)
        if best is None or (res.get("req_per_s") or 0.0) > (best.get("req_per_s") or 0.0):
            best = res
    assert best is not None
    best["runs_req_per_s"] = all_rps
    return best


def wait_idle(pid: int, max_wait: float = 120.0, busy_frac: float = 0.1) -> float:
    """Wait until the target uses less than ``busy_frac`` of a core (work left over from the previous run)."""
    t0 = time.monotonic()
    prev = tree_cpu_s(pid)
    while time.monotonic() - t0 < max_wait:
        time.sleep(0.5)
        cur = tree_cpu_s(pid)
        if cur - prev < busy_frac * 0.5:
            break
        prev = cur
    return time.monotonic() - t0


def run_open_streams(env: Env, t: Target, n: int) -> dict[str, Any]:
    a = env.args
    body = bodies()["openai_sse"]
    cmd = [PY, str(BENCH / "open_streams.py"), t.url("openai_sse"), "-n", str(n), "--pid", str(t.pid)]
    cmd += ["--body", body.decode(), "--hold", str(a.hold), "--batch", str(a.open_batch)]
    cmd += ["--batch-timeout", str(a.open_batch_timeout)]
    for k, v in t.headers["openai_sse"].items():
        cmd += ["-H", f"{k}: {v}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return {"failed": f"open_streams rc {r.returncode}: {r.stderr[-300:]}"}
    return json.loads(r.stdout)


def bench_target(env: Env, name: str) -> dict[str, Any]:
    a = env.args
    out: dict[str, Any] = {"status": "ok", "scenarios": {}}
    try:
        t = STARTERS[name](env, False)
    except SkipTarget as exc:
        log(f"SKIP {name}: {exc}")
        return {"status": "skipped", "reason": str(exc)}
    try:
        log(f"{name}: up on port {t.port} (pid {t.pid}, {t.start_s:.1f}s to healthy)")
        out.update(start_s=round(t.start_s, 2), notes=t.notes)
        bod = bodies()
        checks: dict[str, Any] = {}
        for sc in a.scenarios:
            try:
                checks[sc] = check_scenario(t, sc, bod[sc], 1 if name == "direct" else a.probes)
            except OSError as exc:
                checks[sc] = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
            if not checks[sc]["ok"]:
                log(f"{name}: scenario {sc} unavailable: {checks[sc]['why']}")
        out["checks"] = checks
        out["rss_idle_mb"] = round(tree_rss_kb(t.pid) / 1024, 1)
        for sc in a.scenarios:
            if not checks[sc]["ok"]:
                continue
            for conc in a.concurrency:
                if not t.proc.alive():
                    log(f"{name}: process died:\n{t.proc.tail()}")
                    out["status"] = "died"
                    return out
                res = measure(env, t, sc, conc, bod[sc])
                out["scenarios"][f"{sc}@c{conc}"] = res
                log(f"{name} {sc} c={conc}: {_brief(res)}")
    finally:
        if name != "direct":
            t.proc.stop()
    n = a.open_streams_litellm if name == "litellm" else a.open_streams
    if n > 0:
        try:
            ts = STARTERS[name](env, True)
        except SkipTarget as exc:
            out["open_streams"] = {"failed": str(exc)}
            return out
        try:
            try:  # one non-streaming call first: warms the slow instance and proves it serves at all
                check = check_scenario(ts, "openai_json", bodies()["openai_json"], 1)
            except OSError as exc:
                check = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
            if check["ok"]:
                res = run_open_streams(env, ts, n)
                log(f"{name} open streams: {_brief_open(res)}")
            else:
                res = {"failed": f"check request failed: {check['why']}"}
                log(f"{name} open streams skipped: {res['failed']}")
            out["open_streams"] = res
        finally:
            if name != "direct":
                ts.proc.stop()
    return out


def _brief(r: dict[str, Any]) -> str:
    if "failed" in r:
        return "FAILED " + r["failed"]
    if not r.get("requests"):
        return f"no request finished (errors {r['errors']}, unfinished {r.get('cancelled_in_flight', '?')})"
    ttft = r.get("ttft_ms") or {}
    return (
        f"{r['req_per_s']:.0f} req/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms"
        + (f", TTFT p50 {ttft.get('p50')} ms" if ttft else "")
        + f", errors {r['errors']}, RSS {r['rss_peak_mb']} MB"
    )


def _brief_open(r: dict[str, Any]) -> str:
    if "failed" in r:
        return "FAILED " + r["failed"]
    return (
        f"held {r['held_at_end_of_hold']}/{r['streams_requested']}, errors {r['errors']}, "
        f"RSS {r['rss_before_mb']} -> {r['rss_peak_mb']} MB ({r['rss_per_stream_kb']} KB/stream)"
    )


# --------------------------------------------------------------------------- report
def _pkg(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    mem_gb = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_gb = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    pkgs = {p: _pkg(p) for p in ("stepplan", "aiohttp", "starlette", "uvicorn", "uvloop", "httptools", "orjson")}
    ll_py = litellm_python(args)
    if ll_py:
        r = subprocess.run(
            [str(ll_py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        pkgs["litellm"] = r.stdout.strip() or None
    wrk = None
    if shutil.which("wrk"):
        r = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk = (r.stdout or r.stderr).split("\n")[0].strip() or None
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": pkgs,
        "wrk": wrk,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def litellm_python(args: argparse.Namespace) -> Path | None:
    p = Path(args.litellm_venv) / "bin" / "python"
    return p if p.exists() else None


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def results_table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    targets = results["targets"]
    lines = [
        "| scenario | conc | target | req/s | p50 ms | p99 ms | TTFT p50 | TTFT p99 | errors | RSS MB | CPU ms/req"
        " | overhead p50 | req/s vs pass-through | req/s vs LiteLLM | CPU/req vs pass-through |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def metric(name: str, key: str, field: str = "req_per_s") -> float | None:
        r = targets.get(name, {}).get("scenarios", {}).get(key)
        return r.get(field) if r and "failed" not in r else None

    for sc in args.scenarios:
        for conc in args.concurrency:
            key = f"{sc}@c{conc}"
            for name in args.targets:
                r = targets.get(name, {}).get("scenarios", {}).get(key)
                if not r:
                    continue
                if "failed" in r:
                    lines.append(f"| {sc} | {conc} | {name} | failed: {r['failed'][:80]} |" + " |" * 11)
                    continue
                lat, ttft = r.get("latency_ms") or {}, r.get("ttft_ms") or {}
                me = r.get("req_per_s")
                if not r.get("requests"):  # nothing finished inside the run: no latency to show
                    lat, ttft = {}, {}
                errors = _fmt(r.get("errors"))
                if r.get("cancelled_in_flight"):
                    errors += f" (+{r['cancelled_in_flight']:,} unfinished)"
                elif not r.get("requests"):
                    errors += " (no response in run)"
                row = [
                    sc,
                    str(conc),
                    name,
                    _fmt(me, 0),
                    _fmt(lat.get("p50"), 2),
                    _fmt(lat.get("p99"), 2),
                    _fmt(ttft.get("p50"), 2),
                    _fmt(ttft.get("p99"), 2),
                    errors,
                    _fmt(r.get("rss_peak_mb")),
                    _fmt(r.get("cpu_ms_per_req"), 3),
                    _fmt(r.get("overhead_ms_p50"), 2),
                    "–" if name == "passthrough" else _ratio(me, metric("passthrough", key)),
                    "–" if name == "litellm" else _ratio(me, metric("litellm", key)),
                    "–"
                    if name == "passthrough"
                    else _ratio(r.get("cpu_ms_per_req"), metric("passthrough", key, "cpu_ms_per_req")),
                ]
                lines.append("| " + " | ".join(row) + " |")
    return lines


def metrics_cost_table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """stepplan with metrics on against off: throughput loss and CPU per call added, per row."""
    on_t = results["targets"]["stepplan"].get("scenarios", {})
    off_t = results["targets"]["stepplan-nometrics"].get("scenarios", {})
    lines = ["| scenario | conc | req/s off | req/s on | throughput change | CPU ms/req off | CPU ms/req on"
             " | CPU/req change |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sc in args.scenarios:
        for conc in args.concurrency:
            on, off = on_t.get(f"{sc}@c{conc}"), off_t.get(f"{sc}@c{conc}")
            if not on or not off or "failed" in on or "failed" in off:
                continue
            r_on, r_off = on.get("req_per_s"), off.get("req_per_s")
            c_on, c_off = on.get("cpu_ms_per_req"), off.get("cpu_ms_per_req")
            dr = f"{(r_on / r_off - 1) * 100:+.1f}%" if r_on and r_off else "–"
            dc = f"{(c_on / c_off - 1) * 100:+.1f}%" if c_on and c_off else "–"
            lines.append(f"| {sc} | {conc} | {_fmt(r_off, 0)} | {_fmt(r_on, 0)} | {dr} | {_fmt(c_off, 3)} "
                         f"| {_fmt(c_on, 3)} | {dc} |")
    return lines


def open_streams_table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        "| target | streams asked | held at end of hold | errors | stopped early | open time s"
        " | TTFT p50 ms | RSS before MB | RSS peak MB | RSS after close MB | KB per stream |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.targets:
        r = results["targets"].get(name, {}).get("open_streams")
        if not r:
            continue
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed'][:100]} |" + " |" * 9)
            continue
        row = [
            name,
            _fmt(r["streams_requested"]),
            _fmt(r["held_at_end_of_hold"]),
            f"{r['errors']}" + (f" {r['error_kinds']}" if r["errors"] else ""),
            "yes" if r["stopped_early"] else "no",
            _fmt(r["open_time_s"], 1),
            _fmt((r.get("ttft_ms") or {}).get("p50"), 1),
            _fmt(r["rss_before_mb"]),
            _fmt(r["rss_peak_mb"]),
            _fmt(r["rss_after_close_mb"]),
            _fmt(r["rss_per_stream_kb"], 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    m, s = results["machine"], results["settings"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    out = [
        "## Side-by-side benchmark (`bench/run.py`)",
        "",
        f"_Generated by `{s['command']}` on {m['date']}. Raw data: `{s['json_out']}`._",
        "",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Linux {m['kernel']};"
        f" load average at start {m['loadavg_at_start']}.",
        f"- Python {m['python']}; {pk}; {m['wrk'] or 'wrk not installed'}.",
        f"- Settings: {s['duration_s']} s per run after {s['warmup_s']} s warm-up; concurrency {s['concurrency']};"
        f" fake upstream with {s['chunks']} content chunks per stream; non-streaming load by"
        f" {'wrk' if s['wrk'] else 'sse_load.py'}, streaming by sse_load.py ({s['load_processes']} process);"
        " one worker for every target. Everything (load generator, fake upstream, target) shares the same"
        " cores on 127.0.0.1, so compare rows with each other, not as absolute capacity.",
        "- Columns: p50/p99 is the full request (or the whole stream); TTFT is the time to the first chunk"
        " carrying a token; RSS is the peak resident memory of the target process tree during the run;"
        " CPU ms/req is the target's CPU time divided by the requests it served (the column least disturbed"
        " by other load on the machine); overhead p50 is `x-stepplan-overhead-ms` when sent."
        + (f" Best of {s['repeat']} runs per row." if s.get("repeat", 1) > 1 else ""),
        "- `direct` is the fake upstream itself; `passthrough` is `bench/passthrough.py` (Starlette +"
        " aiohttp, uvicorn with uvloop + httptools), the Python limit. For both, `anthropic_sse` is the fake's"
        " native Anthropic stream (no translation); on LiteLLM and stepplan it is an Anthropic client in"
        " front of the OpenAI upstream.",
        "",
    ]
    skipped = [(n, t) for n, t in results["targets"].items() if t.get("status") != "ok"]
    for n, t in skipped:
        out.append(f"- **{n} {t.get('status')}:** {str(t.get('reason', ''))[:400]}")
    for n, t in results["targets"].items():
        for sc, c in (t.get("checks") or {}).items():
            if not c.get("ok"):
                out.append(f"- **{n} `{sc}` unavailable:** {c.get('why', '')[:300]}")
            elif c.get("overhead_ms_p50_c1") is not None:
                out.append(f"- {n} `{sc}`: `x-stepplan-overhead-ms` p50 at concurrency 1 = {c['overhead_ms_p50_c1']}")
        if t.get("start_s") is not None:
            out.append(f"- {n}: healthy {t['start_s']} s after launch, idle RSS {t.get('rss_idle_mb')} MB.")
    out += ["", "### Throughput and latency", "", *results_table(results, args), ""]
    if {"stepplan", "stepplan-nometrics"} <= set(results["targets"]):
        out += ["### Cost of metrics (stepplan with metrics on vs `STEPPLAN_METRICS=0`)", "",
                *metrics_cost_table(results, args), ""]
    if any(t.get("open_streams") for t in results["targets"].values()):
        out += [
            "### Open streams",
            "",
            f"Slow fake upstream: {s['slow_chunks']} chunks, {s['slow_delay_ms']} ms apart; streams opened in"
            f" batches of {s['open_batch']} (the next batch starts when every stream of the previous one has its"
            f" first token, at most {s['open_batch_timeout_s']} s; more than 5% failures stop the ramp), held"
            f" {s['hold_s']} s, then closed by the client. KB per stream = (RSS peak - RSS before) / streams held.",
            "",
            *open_streams_table(results, args),
            "",
        ]
    return "\n".join(out)


def write_docs(path: Path, section: str) -> None:
    block = f"{DOC_START}\n{section}\n{DOC_END}"
    if path.exists():
        text = path.read_text()
        i, j = text.find(DOC_START), text.find(DOC_END)
        if i != -1 and j > i:
            text = text[:i] + block + text[j + len(DOC_END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "# Performance\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="side-by-side gateway benchmark (127.0.0.1 only)")
    p.add_argument("--quick", action="store_true", help="smoke run: short, fewer scenarios, no LiteLLM")
    p.add_argument("--targets", default=None, help=f"comma list from {','.join(ALL_TARGETS)}")
    p.add_argument("--scenarios", default=None, help=f"comma list from {','.join(SCENARIOS)}")
    p.add_argument("--concurrency", default=None, help="comma list (default 1,32,256,1024; quick 32)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10; quick 2)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--chunks", type=int, default=16, help="content chunks per stream from the fake upstream")
    p.add_argument("--open-streams", type=int, default=None, help="streams for the open-streams test (0 = skip)")
    p.add_argument("--open-streams-litellm", type=int, default=None, help="streams for LiteLLM (default 1000)")
    p.add_argument("--open-batch", type=int, default=250)
    p.add_argument("--open-batch-timeout", type=float, default=60.0, help="max seconds for a batch's first tokens")
    p.add_argument("--hold", type=float, default=None, help="seconds to hold the open streams")
    p.add_argument("--slow-chunks", type=int, default=60)
    p.add_argument("--slow-delay-ms", type=int, default=2000)
    p.add_argument("--probes", type=int, default=20, help="sequential check requests per scenario (overhead p50)")
    p.add_argument("--load-processes", type=int, default=1, help="processes for sse_load.py")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the best req/s is kept")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="use sse_load.py for non-streaming too")
    p.add_argument("--litellm-venv", default=str(BENCH / ".litellm-venv"))
    p.add_argument("--stepplan-plan", default="flash-max", help="plan for the bench account ('' = no subscribe)")
    p.add_argument("--json-out", default=None, help="default bench/results/latest.json (quick: quick.json)")
    p.add_argument("--docs", default=None, help="markdown file to update (default docs/performance.md)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--pin", action="store_true",
                   help="the measured target on CPU 0, everything else (fake upstreams, load, this script) on the "
                        "other CPUs: steadier CPU-per-call numbers on a small machine")
    a = p.parse_args(argv)
    q = a.quick
    a.targets = (a.targets or ("direct,passthrough,stepplan" if q else ",".join(ALL_TARGETS))).split(",")
    a.scenarios = (a.scenarios or ",".join(SCENARIOS)).split(",")
    bad = [x for x in a.targets if x not in ALL_TARGETS + EXTRA_TARGETS] + [x for x in a.scenarios
                                                                            if x not in SCENARIOS]
    if bad:
        p.error(f"unknown target/scenario: {bad}")
    a.concurrency = [int(x) for x in (a.concurrency or ("32" if q else "1,32,256,1024")).split(",")]
    a.duration = a.duration if a.duration is not None else (2.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if q else 1.0)
    a.open_streams = a.open_streams if a.open_streams is not None else (200 if q else 5000)
    a.open_streams_litellm = a.open_streams_litellm if a.open_streams_litellm is not None else min(1000, a.open_streams)
    a.hold = a.hold if a.hold is not None else (1.0 if q else 5.0)
    a.probes = min(a.probes, 5) if q else a.probes
    if a.wrk and not shutil.which("wrk"):
        log("wrk not installed (apt-get install -y wrk); using sse_load.py for non-streaming")
        a.wrk = False
    a.json_out = Path(a.json_out or BENCH / "results" / ("quick.json" if q else "latest.json"))
    a.write_docs = not a.no_docs and (not q or a.docs is not None)
    a.docs = Path(a.docs or ROOT / "docs" / "performance.md")
    return a


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        Proc.stop_all()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_fd_limit()
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            log("--pin needs at least two CPUs; not pinning")
        else:
            Proc.target_cpus = {cpus[0]}
            os.sched_setaffinity(0, set(cpus[1:]))  # inherited by the fake upstreams and the load generators
    tmp = Path(tempfile.mkdtemp(prefix="stepplan-bench-"))
    log(f"temp dir {tmp}; targets {a.targets}; scenarios {a.scenarios}; concurrency {a.concurrency}")
    results: dict[str, Any] = {"machine": machine_facts(a), "targets": {}}
    results["settings"] = {
        "command": "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "concurrency": a.concurrency,
        "scenarios": a.scenarios,
        "chunks": a.chunks,
        "wrk": a.wrk,
        "load_processes": a.load_processes,
        "repeat": a.repeat,
        "pin": a.pin,
        "open_streams": a.open_streams,
        "open_streams_litellm": a.open_streams_litellm,
        "open_batch": a.open_batch,
        "open_batch_timeout_s": a.open_batch_timeout,
        "hold_s": a.hold,
        "slow_chunks": a.slow_chunks,
        "slow_delay_ms": a.slow_delay_ms,
        "json_out": str(
            a.json_out.resolve().relative_to(ROOT) if a.json_out.resolve().is_relative_to(ROOT) else a.json_out
        ),
    }
    t_all = time.monotonic()
    with cleanup_on_signals():
        fake = [PY, str(BENCH / "fake_upstream.py")]
        fast_port, slow_port = free_port(), free_port()
        fast = Proc("fake-fast", [*fake, "--port", str(fast_port), "--chunks", str(a.chunks)], tmp)
        slow_args = ["--chunks", str(a.slow_chunks), "--chunk-delay-ms", str(a.slow_delay_ms)]
        slow = Proc("fake-slow", [*fake, "--port", str(slow_port), *slow_args], tmp)
        for proc, port in ((fast, fast_port), (slow, slow_port)):
            wait_healthy(proc, port, "/healthz", 20)
        env = Env(a, tmp, fast_port, slow_port, fast, slow)
        for name in a.targets:
            log(f"=== {name} ===")
            load = [round(x, 2) for x in os.getloadavg()]
            results["targets"][name] = bench_target(env, name)
            results["targets"][name]["loadavg_before"] = load
    results["total_s"] = round(time.monotonic() - t_all, 1)
    a.json_out.parent.mkdir(parents=True, exist_ok=True)
    a.json_out.write_text(json.dumps(results, indent=2) + "\n")
    section = markdown(results, a)
    print(section)
    log(f"raw JSON written to {a.json_out}")
    if a.write_docs:
        write_docs(a.docs, section)
        log(f"section written to {a.docs}")
    if a.keep_tmp:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {results['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""With ``--workers 2`` the metrics add up every worker: the separate metrics port (parent process,
no token) and the main port (any one worker, admin token) both show every call, and each worker's
own files hold a share of them."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from tests.billing.conftest import ADMIN, Admin
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, free_port
from tests.observability.promtext import parse, scrape, value, wait_for


def with_server_keys(tmp: Path, fake: FakeUpstream, keys: str, env: dict[str, str] | None = None) -> Gateway:
    """A gateway (admin token set, not started) whose ``[server]`` table has ``keys`` too."""
    gw = make_gateway(tmp, fake, env={"STEPPLAN_ADMIN_TOKEN": ADMIN, **(env or {})})
    text = gw.config.read_text()
    assert text.count("[server]\n") == 1
    gw.config.write_text(text.replace("[server]\n", f"[server]\n{keys}\n"))
    return gw


def _per_worker_requests(gw: Gateway) -> dict[int, float]:
    """stepplan_requests_total from each worker's own multiprocess file (read from a copy)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    assert gw.proc is not None
    dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"stepplan-metrics-{gw.proc.pid}-*"))
    assert len(dirs) == 1, dirs
    out: dict[int, float] = {}
    for f in glob.glob(os.path.join(dirs[0], "counter_*.db")):
        pid = int(Path(f).stem.split("_")[-1])
        with tempfile.TemporaryDirectory() as one:
            shutil.copy(f, one)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, one)
            out[pid] = value(parse(generate_latest(registry).decode()), "stepplan_requests_total")
    return out


def test_two_workers_counts_cover_both(tmp_path: Path, fake: FakeUpstream) -> None:
    mport = free_port()
    gw = with_server_keys(tmp_path / "gw", fake, f"metrics_port = {mport}")
    gw.start(workers=2)
    assert gw.proc is not None
    serve_pid = gw.proc.pid
    try:
        admin = Admin(gw)
        _, key = admin.account()
        body = {"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]}
        sent = 0
        deadline = time.monotonic() + 90
        shares: dict[int, float] = {}
        # Fresh connections until both workers have served some calls (the kernel picks the worker).
        while time.monotonic() < deadline:
            for _ in range(10):
                r = httpx.post(f"{gw.openai_base}/chat/completions", json=body,
                               headers={"authorization": f"Bearer {key}", "connection": "close"}, timeout=30)
                assert r.status_code == 200, r.text
                sent += 1
            shares = _per_worker_requests(gw)
            if len([n for n in shares.values() if n > 0]) >= 2:
                break
            time.sleep(0.3)
        metrics_url = f"http://127.0.0.1:{mport}/metrics"

        def complete(s: dict) -> bool:
            return value(s, "stepplan_requests_total", code="ok") == sent

        total = wait_for(metrics_url, complete)  # parent process, no token
        assert value(total, "stepplan_requests_total", code="ok") == sent
        assert value(total, "stepplan_tokens_total", type="input") == 11 * sent
        assert value(total, "stepplan_processes") == 2
        shares = _per_worker_requests(gw)
        assert len([n for n in shares.values() if n > 0]) == 2, shares
        assert sum(shares.values()) == sent
        # the main port (one worker answers) shows the same totals, with the admin token
        main = wait_for(f"{gw.url}/metrics", complete, {"x-admin-token": ADMIN})
        assert value(main, "stepplan_requests_total", code="ok") == sent
        assert value(main, "stepplan_credit_charged_total") == value(total, "stepplan_credit_charged_total") > 0
        # the metrics port is bound to loopback and needs no token; the main port does
        assert httpx.get(f"{gw.url}/metrics", timeout=10).status_code == 401
        assert scrape(metrics_url)  # parses
    finally:
        gw.stop()
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"stepplan-metrics-{serve_pid}-*"))  # cleaned up

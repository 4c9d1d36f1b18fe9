"""/readyz (503 naming the failing check) and ``stepplan doctor``."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx

from tests.conftest import make_gateway
from tests.fakes.upstream import FakeUpstream, free_port


def test_readyz_ready_then_names_the_failing_check(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path / "gw", fake)
    gw.start()
    try:
        r = httpx.get(f"{gw.url}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["failed"] == []
        assert set(body["checks"]) == {"database", "migrations", "writer", "router"}
        assert all(c["ok"] for c in body["checks"].values())
        assert body["checks"]["router"]["detail"] == "weights loaded"
        # the schema moves on under the gateway (another host ran a newer version's migrations)
        with sqlite3.connect(tmp_path / "gw" / "stepplan.db") as db:
            db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{gw.url}/readyz", timeout=10)).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 503
        assert r.json()["failed"] == ["migrations"]
        assert "9999_from_the_future" in r.json()["checks"]["migrations"]["detail"]
        assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200  # liveness is unaffected
    finally:
        gw.stop()


def test_doctor_passes_then_names_an_unreachable_upstream(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path / "ok", fake)
    gw.cli("accounts", "list")  # migrates the database
    out = gw.cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ok  ] upstream fake:" in out.stdout and "[ok  ] migrations:" in out.stdout
    assert "[ok  ] database:" in out.stdout

    dead = free_port()
    bad = make_gateway(tmp_path / "bad", fake, extra=f"""
[upstreams.gone]
protocol = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
""")
    out = bad.cli("doctor", "--json", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is False
    levels = {(f["area"], f["level"]) for f in report["findings"]}
    assert ("upstream gone", "fail") in levels
    assert ("upstream fake", "ok") in levels
    assert ("migrations", "fail") in levels  # a fresh database nobody migrated yet
    assert any(f["area"] == "config" and "gone" in f["message"] for f in report["findings"])  # serves no model
    assert "upstream-secret" not in out.stdout

"""bench/availability.py, small (200 calls at concurrency 16): a real gateway over a pool of three
fake members (one failing 30 % then going down half-way, one answering 429 with Retry-After)
serves every call, never sends to the throttled member inside its Retry-After, bills each call
exactly once, and ``stepplan ledger check`` passes. The full run (2,000 at 32) is in
docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "availability.py"


def test_availability_under_faults_small() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--calls", "200", "--concurrency", "16", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=BENCH.parents[1])
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["success_rate"] >= 0.999, report
    assert report["throttled_violations"] == 0, report
    assert report["billed_once"] and report["ledger_check"], report
    assert report["member_failures"]["flaky"] >= 1 and report["retried_attempts"] >= 1  # faults did happen
    assert report["served_by"].get("pool/healthy", 0) > 0

"""Console page render times with a big ledger: 100,000 entries in one account.

    .venv/bin/python bench/console.py [--entries 100000] [--repeat 15] [--database-url URL]

It creates a database (a temporary SQLite file unless ``--database-url`` names one, e.g.
``postgresql://postgres@127.0.0.1:5432/test``; that database's tables are dropped first), migrates
it, creates an account with a subscription (the real billing functions) and a few keys, inserts
``--entries`` ledger entries spread over 90 days (bulk inserts into the real ``usage_entries``
table, charged to the account's monthly pot, so the ledger check holds) with a mix of models,
router calls, statuses and keys; then starts ``stepplan serve`` on it, signs in as the key holder
and as the operator, and times every console page (``--repeat`` requests each, after one warm-up).
The time is the whole HTTP request over 127.0.0.1, so it bounds the server time from above.
"first" is a page's first request after start-up (the Usage page then reads every day of the range
from the database; days that are over are kept per process after that). Prints a table (first,
median, p95, max in ms) and exits 1 if any page's median is over ``--budget``
(200 ms). The ledger check (``/console/admin/ledger/check``) reads the whole ledger by design and
is reported but not held to the budget.
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN = "bench-console-admin-token"
ACCOUNT = "bench-console"
MODELS = [("step-3.5-flash", "step-3.5-flash"), ("step-3.7-flash", "step-3.7-flash"),
          ("step-router-v1", "step-3.5-flash"), ("step-router-v1", "step-3.7-flash")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(db_url: str, n: int) -> tuple[str, str]:
    """(the key, a trace id in the middle of the ledger)."""
    from sqlalchemy import insert, text, update

    from stepplan.billing import subscriptions
    from stepplan.billing.clock import Clock
    from stepplan.billing.plans import BillingConfig
    from stepplan.store import accounts
    from stepplan.store.db import make_engine, sessionmaker
    from stepplan.store.ledger import ENTRIES
    from stepplan.store.migrate import migrate
    from stepplan.store.models import Base, CreditPot

    engine = make_engine(db_url)
    if not db_url.startswith("sqlite"):
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    await migrate(engine)
    sessions = sessionmaker(engine)
    cfg = BillingConfig.from_raw({})
    now = Clock.from_env().now()
    async with sessions() as s:
        acct = await accounts.create_account(s, ACCOUNT)
        await subscriptions.subscribe(s, cfg, acct.id, "flash-max", "monthly", now - 20 * 86400)
        key_ids = []
        key = ""
        for i in range(5):
            row, k = await accounts.create_key(s, acct, f"key {i}")
            key_ids.append(row.id)
            key = key or k
        await s.commit()
        pots = await subscriptions.db.live_pots(s, acct.id, now)
        pot = next(p for p in pots if p.kind == "subscription")
        pot_id, aid = pot.id, acct.id
    middle = ""
    used = 0
    batch: list[dict[str, object]] = []
    span = 90 * 86400
    for i in range(n):
        req, served = MODELS[i % len(MODELS)]
        t = now - span + span * i // n
        inp, out = 200 + i % 700, 50 + i % 300
        cost = inp * 2 + out * 8
        rid = f"bench{i:010d}"
        if i == n // 2:
            middle = rid
        status = "ok" if i % 50 else "upstream_error"
        batch.append({"request_id": rid, "owner": "bench", "account_id": aid, "key_id": key_ids[i % len(key_ids)],
                      "requested_model": req, "served_model": served, "input_tokens": inp,
                      "cache_read_tokens": i % 3 * 100, "cache_write_tokens": 0, "output_tokens": out,
                      "reasoning_tokens": out // 2, "usage_known": True, "rate_input": 2, "rate_cache": 0,
                      "rate_output": 8, "cost": cost, "charged": cost, "pot_id": pot_id, "pot_amount": cost,
                      "uncollected": 0, "reserved": cost, "status": status, "route_score": None,
                      "first_byte_ms": 120.0, "total_ms": 900.0 + i % 500, "started_at": t - 1, "created_at": t,
                      "protocol": "openai"})
        used += cost
        if len(batch) == 5000:
            async with sessions() as s:
                await s.execute(insert(ENTRIES), batch)
                await s.commit()
            batch = []
    async with sessions() as s:
        if batch:
            await s.execute(insert(ENTRIES), batch)
        await s.execute(update(CreditPot).where(CreditPot.id == pot_id).values(used=CreditPot.used + used))
        await s.commit()
    if not db_url.startswith("sqlite"):
        # What autovacuum does within a minute of a bulk load: without statistics the planner
        # takes the 100k rows for a handful and picks bitmap scans and sorts for the Calls page.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE usage_entries"))
    await engine.dispose()
    return key, middle


def start(db_url: str, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    cfg = workdir / "stepplan.toml"
    cfg.write_text(f"""
[database]
url = "{db_url}"

[server]
default_upstream = "none"

[upstreams.none]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "unused"
""")
    env = {**os.environ, "STEPPLAN_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "stepplan", "serve", "--config", str(cfg), "--port", str(port),
                             "--workers", "1"], env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "gateway.log", "wb"), start_new_session=True)  # noqa: SIM115
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the gateway did not start; see {workdir / 'gateway.log'}")


def signin(client: httpx.Client, path: str, field: str, secret: str) -> None:
    page = client.get(path).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    r = client.post(path, data={"csrf": csrf.group(1), field: secret})
    if r.status_code != 303:
        raise SystemExit(f"sign-in at {path} failed: {r.status_code} {r.text[:300]}")


def time_page(client: httpx.Client, path: str, repeat: int) -> tuple[float, list[float]]:
    """(the first request's time, the next ``repeat`` requests' times), in ms."""
    t0 = time.perf_counter()
    r = client.get(path)
    first = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, path
    return first, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--budget", type=float, default=200.0)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        workdir = Path(tmp)
        db_url = args.database_url or f"sqlite:///{workdir}/console.db"
        t0 = time.perf_counter()
        key, trace = asyncio.run(fill(db_url, args.entries))
        print(f"filled {args.entries:,} ledger entries in {time.perf_counter() - t0:.1f} s ({db_url.split(':')[0]})")
        port = free_port()
        proc = start(db_url, workdir, port)
        try:
            base = f"http://127.0.0.1:{port}"
            holder = httpx.Client(base_url=base, timeout=60)
            signin(holder, "/console/signin", "api_key", key)
            admin = httpx.Client(base_url=base, timeout=60)
            signin(admin, "/console/admin/signin", "admin_token", ADMIN)
            pages = [(holder, "/console/overview"), (holder, "/console/usage?days=30"),
                     (holder, "/console/usage?days=90"), (holder, "/console/calls"),
                     (holder, f"/console/calls?trace={trace}"), (holder, "/console/calls?model=step-3.7-flash"),
                     (holder, "/console/calls?status=upstream_error"), (holder, "/console/keys"),
                     (holder, "/console/setup"), (admin, "/console/admin/accounts"),
                     (admin, f"/console/admin/accounts/{ACCOUNT}"), (admin, "/console/admin/keys"),
                     (admin, "/console/admin/ledger"), (admin, f"/console/admin/ledger?account={ACCOUNT}"),
                     (admin, f"/console/admin/ledger?trace={trace}"),
                     (admin, "/console/admin/ledger?status=upstream_error"), (admin, "/console/admin/health")]
            over = []
            print("\n| page | first ms | median ms | p95 ms | max ms |\n|---|---:|---:|---:|---:|")
            for client, path in pages:
                first, ts = time_page(client, path, args.repeat)
                ts.sort()
                med, p95 = statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.95))]
                print(f"| `{path}` | {first:.1f} | {med:.1f} | {p95:.1f} | {ts[-1]:.1f} |")
                if med > args.budget:
                    over.append(path)
            first, ts = time_page(admin, "/console/admin/ledger/check", 3)
            print(f"| `/console/admin/ledger/check` (whole ledger; not held to the budget) | {first:.1f} | "
                  f"{statistics.median(ts):.1f} | {max(ts):.1f} | {max(ts):.1f} |")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
    if over:
        print(f"\nover the {args.budget:.0f} ms budget: {', '.join(over)}")
        raise SystemExit(1)
    print(f"\nevery page's median is within {args.budget:.0f} ms")


if __name__ == "__main__":
    main()

"""CPU per call (process time, so that a busy machine disturbs it less) of authentication and the
per-key checks, in process, on SQLite:

* ``auth``: ``Authenticator.authenticate`` with the key cached (the hot path: no database), for a
  key without settings and for one with every per-key setting (expiry, IP and model allowlists);
* ``reserve+settle``: the credit meter's ``reserve`` and ``settle`` (the in-memory part; the ledger
  writes are awaited outside the timing), for a plain key and for a key with its own rpm,
  concurrency and daily Credit limit (the key's limiter entry and its limit pot held and charged).

    python bench/micro/key_checks.py [--calls 20000]

Runs against whichever ``stepplan`` is on ``PYTHONPATH``; a tree without per-key settings (before
issue 16) measures the plain key only, so the two can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import tempfile
import time
from typing import Any


async def run(calls: int) -> None:
    from sqlalchemy import text

    from stepplan.auth import Authenticator
    from stepplan.billing import subscriptions
    from stepplan.billing.credit_meter import CreditMeter
    from stepplan.billing.meter import Outcome
    from stepplan.billing.plans import BillingConfig
    from stepplan.protocols.canonical import Message, Request, Text, Usage
    from stepplan.settings import load_settings
    from stepplan.store.accounts import create_account, create_key
    from stepplan.store.db import make_engine, sessionmaker
    from stepplan.store.migrate import migrate

    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{tmp}/bench.db"
    settings = load_settings(env={"STEPPLAN_DATABASE_URL": url})
    engine = make_engine(url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    cfg = BillingConfig.from_raw(settings.billing)
    new_tree = "client" in inspect.signature(Authenticator.authenticate).parameters
    async with sessions() as s:
        acct = await create_account(s, "bench")
        await subscriptions.subscribe(s, cfg, acct.id, "flash-max", None, int(time.time()), None)
        _, plain = await create_key(s, acct, "plain")
        limited = None
        if new_tree:
            row, limited = await create_key(s, acct, "limited")
            await s.flush()
            await s.execute(text(
                "UPDATE api_keys SET expires_at = :e, models = :m, ip_allow = :ip, rpm = 1000000000, "
                "concurrency = 1000000, credit_limit_daily = :c WHERE id = :id"),
                {"e": int(time.time()) + 86_400, "m": '["step-3.5-flash", "step-router-v1"]',
                 "ip": '["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8"]', "c": 10**15, "id": row.id})
        await s.commit()

    auth = Authenticator(sessions)
    meter = CreditMeter(settings, sessions)
    await meter.start()
    spec = settings.catalog.get("step-3.5-flash")
    req = Request(model="step-3.5-flash", messages=[Message(role="user", content=[Text("hi")])], max_tokens=10)
    results: dict[str, float] = {}

    def client() -> str:
        return "127.0.0.1"

    async def auth_once(key: str) -> Any:
        if new_tree:
            return await auth.authenticate(key, client)
        return await auth.authenticate(key)

    for name, key in (("plain", plain), ("limited", limited)):
        if key is None:
            continue
        info = await auth_once(key)  # cached from here on
        samples = []
        for _ in range(5):
            t = time.process_time()
            for _ in range(calls):
                await auth_once(key)
            samples.append((time.process_time() - t) / calls)
        results[f"auth {name} key"] = statistics.median(samples)

        outcome = Outcome(served=spec, usage=Usage(input=11, output=7, known=True), status="ok")
        samples = []
        for r in range(5):
            futs = []
            elapsed = 0.0
            for b in range(calls // 1000):  # 100 calls in flight at a time: settlements go to the group commit
                t = time.process_time()
                held = [await meter.reserve(info, spec, req, f"{name}-{r}-{b}-{i}", 20) for i in range(100)]
                futs += [meter.settle(res, outcome) for res in held]
                elapsed += time.process_time() - t
                await asyncio.gather(*futs)  # the ledger writes, outside the timing
                futs = []
            samples.append(elapsed / (calls // 10))
        results[f"reserve+settle {name} key"] = statistics.median(samples)

    await meter.stop()
    await auth.stop()
    await engine.dispose()
    tree = os.path.dirname(os.path.dirname(inspect.getfile(Authenticator)))
    print(f"stepplan from {tree} ({'with' if new_tree else 'without'} per-key settings), {calls} calls")
    for k, v in results.items():
        print(f"  {k:<32} {v * 1e6:8.2f} µs/call")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    asyncio.run(run(args.calls))


if __name__ == "__main__":
    main()

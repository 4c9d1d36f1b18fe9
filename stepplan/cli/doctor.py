"""``stepplan doctor``: the readiness checks of ``/readyz`` plus configuration problems and
upstream reachability (one cheap request each), for people setting a gateway up.

Exit code 0 when nothing failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from dataclasses import asdict, dataclass
from typing import Any

import click

from ..settings import Settings, UpstreamConfig


@dataclass(slots=True)
class Finding:
    area: str
    level: str  # "ok" | "warn" | "fail"
    message: str


def config_findings(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    where = settings.config_path or "built-in defaults (no --config / STEPPLAN_CONFIG)"
    out.append(Finding("config", "ok", f"loaded from {where}"))
    if not settings.admin_token:
        out.append(Finding("config", "warn", "no admin token (STEPPLAN_ADMIN_TOKEN or [server] admin_token): the "
                                             "admin API is off and /metrics is only served on [server] metrics_port"))
    if not settings.secret:
        out.append(Finding("config", "ok", "signing secret kept in the database (set [server] secret to pin it)"))
    if settings.metrics and settings.metrics_port and settings.metrics_host not in ("127.0.0.1", "::1", "localhost"):
        out.append(Finding("config", "warn", f"metrics_port is bound to {settings.metrics_host}: /metrics there needs "
                                             "no token, keep that address private"))
    if not settings.metrics:
        out.append(Finding("config", "warn", "metrics are off ([server] metrics = false)"))
    used = {settings.default_upstream} | {m.upstream for m in settings.catalog.models.values() if m.upstream}
    for name, up in sorted(settings.upstreams.items()):
        if name not in used:
            out.append(Finding("config", "warn", f"upstream {name} serves no model"))
        if up.protocol != "local" and not up.api_key:
            out.append(Finding("config", "warn", f"upstream {name} has no api_key (or its api_key_env is unset)"))
    if settings.billing.get("enabled", True):
        try:
            from ..billing.pricing import PriceBook

            PriceBook(settings.catalog)
            out.append(Finding("config", "ok", "prices valid for every billed model"))
        except ValueError as exc:
            out.append(Finding("config", "fail", f"billing prices: {exc}"))
    return out


async def upstream_finding(up: UpstreamConfig, timeout: float = 5.0) -> Finding:
    """One cheap request: ``GET {base_url}/models`` with the upstream's key. Any HTTP answer means
    reachable; 401/403 means the key was refused."""
    if up.protocol == "local":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return Finding(f"upstream {up.name}", "fail", "in-process model: llama-cpp-python is not installed "
                                                          "(pip install 'stepplan[local]')")
        return Finding(f"upstream {up.name}", "ok", "in-process model (llama-cpp-python installed)")
    from ..engines._h1 import ConnectionPool, HTTPError, render_headers
    from ..engines._http import make_transport
    from ..engines.anthropic import ANTHROPIC_VERSION

    headers = dict(up.headers)
    if up.api_key:
        if up.protocol == "anthropic":
            headers.update({"x-api-key": up.api_key, "anthropic-version": ANTHROPIC_VERSION})
        else:
            headers["authorization"] = f"Bearer {up.api_key}"
    pool = make_transport(dataclasses.replace(up, max_connections=1,
                                              connect_timeout=min(timeout, up.connect_timeout)))
    assert isinstance(pool, ConnectionPool)  # direct or through the upstream's proxy
    area = f"upstream {up.name}"
    try:
        async with asyncio.timeout(timeout):
            resp = await pool.request("GET", "/models", render_headers(headers) + b"Accept: application/json\r\n",
                                      b"", idle_timeout=timeout)
            await resp.read()
    except TimeoutError:
        return Finding(area, "fail", f"{up.base_url}: no answer within {timeout:g}s")
    except (HTTPError, OSError) as exc:
        return Finding(area, "fail", f"{up.base_url}: {exc}")
    finally:
        await pool.aclose()
    if resp.status in (401, 403):
        return Finding(area, "fail", f"{up.base_url} answered {resp.status}: the api_key was refused")
    if resp.status >= 500:
        return Finding(area, "warn", f"{up.base_url} answered {resp.status}")
    return Finding(area, "ok", f"{up.base_url} reachable (GET /models: {resp.status})")


async def gather_findings(settings: Settings) -> list[Finding]:
    from ..observability.health import check_database, check_router
    from ..routing.route import Router
    from ..store.db import make_engine, sessionmaker

    out = config_findings(settings)
    engine = make_engine(settings.database_url)
    try:
        for c in await check_database(sessionmaker(engine)):
            out.append(Finding(c.name, "ok" if c.ok else "fail", c.detail))
    finally:
        await engine.dispose()
    router = Router(settings.catalog, settings.router)
    try:
        router.preload()
        c = check_router(router)
        out.append(Finding(c.name, "ok" if c.ok else "fail", c.detail))
    except Exception as exc:
        out.append(Finding("router", "fail", f"cannot load the routing weights: {exc}"))
    out.append(Finding("writer", "ok", "checked by a running gateway (GET /readyz)"))
    out += await asyncio.gather(*(upstream_finding(up) for _, up in sorted(settings.upstreams.items())))
    return out


MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check configuration, database, migrations, router weights and upstreams."""
    settings: Settings = ctx.obj["settings"]
    findings = asyncio.run(gather_findings(settings))
    failed = [f for f in findings if f.level == "fail"]
    if as_json:
        import json

        click.echo(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}))
    else:
        for f in findings:
            click.echo(f"[{MARK[f.level]}] {f.area}: {f.message}")
        warned = sum(f.level == "warn" for f in findings)
        click.echo(f"\n{len(failed)} failed, {warned} warnings" if failed or warned else "\nall checks passed")
    sys.exit(1 if failed else 0)


def register(group: Any) -> None:
    group.add_command(doctor)

"""Operator pages (admin token): Accounts (search, create, subscribe/upgrade/downgrade and
top-ups with a preview of the amount before confirming), Keys across accounts, Ledger (search,
check) and Health. Writes go through the same billing and store functions as the CLI and the
admin API; a preview runs the real function in a transaction that is rolled back."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from ..api.usage import billing_config
from ..billing import subscriptions
from ..billing.check import check_ledger
from ..billing.plans import PERIODS, yuan
from ..billing.usage import account_usage
from ..observability.health import readiness
from ..store import accounts as acc
from . import charts, queries
from . import security as sec
from .holder import ROUTER_MODEL, call_filter, signin_form, start_session, throttle
from .web import ConsoleError, Ctx, admin_fp, int_param, limiter, log, page, redirect, render

LEDGER_PAGE = 100


@page(None)
async def signin(ctx: Ctx) -> Response:
    token = ctx.state.settings.admin_token
    if not token:
        raise ConsoleError("operator sign-in is off: this gateway has no admin token (STEPPLAN_ADMIN_TOKEN)", 404)
    if ctx.request.method == "GET":
        return await signin_form(ctx, "admin_signin.html")
    ip = throttle(ctx)
    given = ctx.form.get("admin_token", "")
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        limiter(ctx.request).failed(ip, ctx.now)
        log.info("console: failed %s sign-in from %s", "operator", ip)
        raise ConsoleError("that admin token is not valid", 401)
    limiter(ctx.request).succeeded(ip)
    async with ctx.state.sessions() as s:
        session = await sec.open_session(s, "operator", ctx.now, int(ctx.cfg.session_hours * 3600),
                                         admin_fp=admin_fp(ctx))
        await s.commit()
    return start_session(ctx, session, "/console/admin/accounts")


async def _account(s: Any, name: str) -> Any:
    a = await acc.get_account(s, name)
    if a is None:
        raise ConsoleError(f"no account named {name[:128]!r}", 404)
    return a


def account_url(name: str) -> str:
    return "/console/admin/accounts/" + quote(name, safe="")


@page("operator")
async def accounts(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        name = ctx.form.get("name", "")
        if not name or len(name) > 128:
            raise ConsoleError("an account name must be 1 to 128 characters")
        async with ctx.state.sessions() as s:
            try:
                await acc.create_account(s, name)
            except acc.AccountExists as exc:
                raise ConsoleError(str(exc), 409) from None
            await s.commit()
        return redirect(ctx, account_url(name))
    text = ctx.q("q")[:128]
    async with ctx.state.sessions() as s:
        rows = await queries.find_accounts(s, text, 200)
    return render(ctx, "admin_accounts.html", rows=rows, q=text, url=account_url)


async def _account_page(ctx: Ctx, name: str, **extra: Any) -> Response:
    cfg = billing_config(ctx.request)
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        view = await account_usage(s, cfg, a.id, ctx.now, since=ctx.now, until=ctx.now + 1)
        keys = await queries.account_keys(s, a.id)
        used = await queries.last_used(s, [k.id for k in keys])
        await s.commit()
    buckets = []
    for b in view["plan_credit_rate_limit"]["credit_buckets"]:
        total, residual = int(b["credit_total_micro"]), int(b["credit_residual_micro"])
        buckets.append({**b, "bar": charts.left_bar(residual / total if total else 0.0)})
    return render(ctx, "admin_account.html", account=a, sub=view["subscription"],
                  lim=view["plan_credit_rate_limit"], buckets=buckets, keys=keys, used=used,
                  plans=list(cfg.plans.values()), packs=list(cfg.packs.values()), periods=list(PERIODS),
                  url=account_url(a.name), yuan=yuan, done=ctx.q("done")[:64], **extra)


@page("operator")
async def account(ctx: Ctx) -> Response:
    return await _account_page(ctx, ctx.request.path_params["name"])


@page("operator")
async def subscribe(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    cfg = billing_config(ctx.request)
    plan, period = ctx.form.get("plan", ""), ctx.form.get("period", "") or None
    auto = {"on": True, "off": False}.get(ctx.form.get("auto_renew", ""))
    confirm = ctx.form.get("confirm") == "1"
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        try:
            result = await subscriptions.subscribe(s, cfg, a.id, plan, period, ctx.now, auto)
        except subscriptions.BillingError as exc:
            await s.rollback()
            raise ConsoleError(str(exc)) from None
        if confirm:
            await s.commit()
        else:
            await s.rollback()  # a preview: the real computation, nothing written
    if confirm:
        return redirect(ctx, account_url(name) + f"?done={result.action}")
    return render(ctx, "admin_preview.html", account=name, url=account_url(name), what="subscribe",
                  result=result.as_dict(), fields={"plan": plan, "period": period or "",
                                                   "auto_renew": ctx.form.get("auto_renew", "")})


@page("operator")
async def topup(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    cfg = billing_config(ctx.request)
    pack = ctx.form.get("pack", "")
    confirm = ctx.form.get("confirm") == "1"
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        try:
            pot = await subscriptions.topup(s, cfg, a.id, pack, ctx.now)
        except subscriptions.BillingError as exc:
            await s.rollback()
            raise ConsoleError(str(exc)) from None
        info = {"pack": pack, "credits": pot.total, "price": yuan(cfg.pack(pack).price), "expires_at": pot.expires_at}
        if confirm:
            await s.commit()
        else:
            await s.rollback()
    if confirm:
        return redirect(ctx, account_url(name) + "?done=topup")
    return render(ctx, "admin_preview.html", account=name, url=account_url(name), what="topup", result=info,
                  fields={"pack": pack})


@page("operator")
async def create_key(ctx: Ctx) -> Response:
    name = ctx.form.get("account", "") or ctx.request.path_params.get("name", "")
    label = ctx.form.get("name", "")[:128] or None
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        row, key = await acc.create_key(s, a, label)
        await s.commit()
    ctx.state.gateway.auth.invalidate()
    return render(ctx, "admin_new_key.html", account=a.name, url=account_url(a.name), key=key, row=row)


@page("operator")
async def revoke_key(ctx: Ctx) -> Response:
    key_id = int_param(ctx.request.path_params["key_id"], "key id", lo=1)
    assert key_id is not None
    async with ctx.state.sessions() as s:
        revoked = await acc.revoke_key(s, key_id)
        await s.commit()
    if not revoked:
        raise ConsoleError(f"no active key with id {key_id}", 404)
    ctx.state.gateway.auth.invalidate()
    back = ctx.form.get("next", "")
    return redirect(ctx, back if back.startswith("/console/admin/") and "//" not in back else "/console/admin/keys")


@page("operator")
async def keys(ctx: Ctx) -> Response:
    name = ctx.q("account")[:128]
    async with ctx.state.sessions() as s:
        a = await _account(s, name) if name else None
        rows = await acc.list_keys(s, a)
        used = await queries.last_used(s, [k.id for k, _ in rows])
    return render(ctx, "admin_keys.html", rows=rows, used=used, account=name, url=account_url)


@page("operator")
async def ledger(ctx: Ctx) -> Response:
    name = ctx.q("account")[:128]
    async with ctx.state.sessions() as s:
        account_id = (await _account(s, name)).id if name else None
        f = call_filter(ctx, account_id)
        rows = await queries.calls(s, f, LEDGER_PAGE + 1)
        names = await queries.account_names(s, {r.account_id for r in rows})
    more = len(rows) > LEDGER_PAGE
    rows = rows[:LEDGER_PAGE]
    params = {"account": name, "model": ctx.q("model"), "status": ctx.q("status"), "trace": ctx.q("trace"),
              "from": ctx.q("from"), "to": ctx.q("to")}
    older = {**params, "before": rows[-1].id} if more and rows else None
    return render(ctx, "admin_ledger.html", rows=rows, names=names, params=params, older=older, report=None)


@page("operator")
async def ledger_check(ctx: Ctx) -> Response:
    cfg = billing_config(ctx.request)
    async with ctx.state.sessions() as s:
        report = await check_ledger(s, cfg.owner_ttl_seconds, cfg.lease_idle_seconds)
    return render(ctx, "admin_check.html", report=report.as_dict())


@page("operator")
async def health(ctx: Ctx) -> Response:
    state = ctx.state
    gw = state.gateway
    router_cfg = state.settings.router
    async with state.sessions() as s:
        split = await queries.served_split(s, None, ROUTER_MODEL, ctx.now - 86400, ctx.now + 1)
    routed = sum(n for _, n in split)
    pro = sum(n for m, n in split if m == router_cfg.pro_engine)
    checks = await readiness(state.sessions, gw.meter, gw.router)
    return render(ctx, "admin_health.html", upstreams=gw.engines.upstream_states(), router=router_cfg,
                  routed=routed, pro=pro, observed=(pro / routed) if routed else None, split=split, checks=checks)

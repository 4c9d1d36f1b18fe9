"""Key-holder pages: sign-in with an API key, Overview, Usage, Calls, Keys, Set-up. Every
query takes the account from the session: a holder never reaches another account's data."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from ..api.usage import billing_config
from ..billing.usage import account_usage
from ..store import accounts as acc
from ..store import keys as key_store
from ..store.audit_log import record
from ..store.models import ApiKey
from . import charts, queries
from . import security as sec
from .snippets import snippets
from .web import (
    ConsoleError,
    Ctx,
    actor,
    base_url,
    date_param,
    day_label,
    int_param,
    limiter,
    log,
    page,
    redirect,
    render,
)

ROUTER_MODEL = "step-router-v1"
RANGES = (7, 30, 90)
CALLS_PAGE = 50


async def signin_form(ctx: Ctx, template: str) -> Response:
    """A sign-in form with a fresh double-submit CSRF token."""
    token = secrets.token_urlsafe(24)
    resp = render(ctx, template, pre_csrf=token)
    sec.set_cookie(resp, sec.PRE_COOKIE, token, secure=ctx.secure, max_age=3600)
    return resp


def throttle(ctx: Ctx) -> str:
    ip = sec.client_ip(ctx.request, ctx.cfg.trust_proxy)
    wait = limiter(ctx.request).retry_after(ip, ctx.now)
    if wait:
        raise ConsoleError(f"too many failed sign-ins from your address; try again in {wait} s", 429,
                           {"retry-after": str(wait)})
    return ip


def start_session(ctx: Ctx, session: sec.Session, to: str) -> Response:
    resp = redirect(ctx, to)
    sec.set_cookie(resp, sec.SESSION_COOKIE, sec.sign(ctx.key, session.token), secure=ctx.secure,
                   max_age=session.expires_at - ctx.now)
    sec.clear_cookie(resp, sec.PRE_COOKIE, secure=ctx.secure)
    return resp


@page(None)
async def signin(ctx: Ctx) -> Response:
    if ctx.request.method == "GET":
        return await signin_form(ctx, "signin.html")
    ip = throttle(ctx)
    key = ctx.form.get("api_key", "")
    info = None
    if key:
        async with ctx.state.sessions() as s:
            info = await acc.lookup_key(s, acc.hash_key(key))
    if info is None:
        limiter(ctx.request).failed(ip, ctx.now)
        log.info("console: failed %s sign-in from %s", "key holder", ip)
        raise ConsoleError("that API key is not valid or has been revoked", 401)
    limiter(ctx.request).succeeded(ip)
    async with ctx.state.sessions() as s:
        session = await sec.open_session(s, "holder", ctx.now, int(ctx.cfg.session_hours * 3600),
                                         account_id=info.account_id, key_id=info.key_id)
        await s.commit()
    return start_session(ctx, session, "/console/overview")


@page("any")
async def signout(ctx: Ctx) -> Response:
    assert ctx.session is not None
    async with ctx.state.sessions() as s:
        await sec.close_session(s, ctx.session.token, ctx.now)
        await s.commit()
    resp = redirect(ctx, "/console/signin")
    sec.clear_cookie(resp, sec.SESSION_COOKIE, secure=ctx.secure)
    return resp


def _account_id(ctx: Ctx) -> int:
    assert ctx.session is not None and ctx.session.account_id is not None
    return ctx.session.account_id


@page("holder")
async def overview(ctx: Ctx) -> Response:
    cfg = billing_config(ctx.request)
    aid = _account_id(ctx)
    async with ctx.state.sessions() as s:
        account = await queries.account_by_id(s, aid)
        view = await account_usage(s, cfg, aid, ctx.now, since=ctx.now, until=ctx.now + 1)
        await s.commit()
    lim = view["plan_credit_rate_limit"]
    buckets = []
    for b in lim["credit_buckets"]:
        total, residual = int(b["credit_total_micro"]), int(b["credit_residual_micro"])
        frac = residual / total if total else 0.0
        buckets.append({**b, "frac": frac, "bar": charts.left_bar(frac)})
    windows = []
    for prefix, label in (("five_hour", "window_5h"), ("weekly", "window_week")):
        if view.get(f"{prefix}_usage_reset_time"):
            frac = float(view[f"{prefix}_usage_left_rate"])
            windows.append({"label": label, "frac": frac, "bar": charts.left_bar(frac),
                            "limit": view.get(f"{prefix}_credit_limit"), "reset": view[f"{prefix}_usage_reset_time"]})
    return render(ctx, "overview.html", account=account.name if account else "", sub=view["subscription"],
                  lim=lim, buckets=buckets, windows=windows)


def day_cache(ctx: Ctx) -> queries.DayCache:
    cache = getattr(ctx.state, "console_days", None)
    if cache is None:
        cache = ctx.state.console_days = queries.DayCache()
    return cache


def usage_range(ctx: Ctx) -> tuple[int, int, int | None]:
    """(since, until, days) of the Usage page: ``days`` (7/30/90, default 30) or ``from``/``to`` dates."""
    since, until = date_param(ctx.q("from"), "from"), date_param(ctx.q("to"), "to", end=True)
    if since is not None or until is not None:
        until = until if until is not None else ctx.now + 1
        since = since if since is not None else until - 30 * 86400
        if until <= since:
            raise ConsoleError("'to' must not be before 'from'")
        if until - since > 400 * 86400:
            raise ConsoleError("choose a range of at most 400 days")
        return since, until, None
    days = int_param(ctx.q("days"), "days", lo=1, hi=400) or 30
    today = ctx.now // 86400
    return (today - days + 1) * 86400, ctx.now + 1, days


@page("holder")
async def usage(ctx: Ctx) -> Response:
    aid = _account_id(ctx)
    since, until, days = usage_range(ctx)
    async with ctx.state.sessions() as s:
        rows = await day_cache(ctx).rows(s, aid, since, until, ctx.now)
    day_ids = list(range(since // 86400, (until - 1) // 86400 + 1))
    index = {d: i for i, d in enumerate(day_ids)}
    labels = [day_label(d) for d in day_ids]
    models = sorted({r.served for r in rows})
    credit = {m: [0.0] * len(day_ids) for m in models}
    kinds = ("input", "cache_read", "cache_write", "output")
    tokens = {k: [0.0] * len(day_ids) for k in kinds}
    per_model: dict[tuple[str, str], dict[str, int]] = {}
    split: dict[str, int] = {}
    for r in rows:
        i = index.get(r.day)
        if i is not None:
            credit[r.served][i] += r.charged / 1_000_000
            for k in kinds:
                tokens[k][i] += getattr(r, k)
        tot = per_model.setdefault((r.requested, r.served), dict.fromkeys(
            ("calls", "charged", "uncollected", "input", "cache_read", "cache_write", "output", "reasoning"), 0))
        for k in tot:
            tot[k] += getattr(r, k)
        if r.requested == ROUTER_MODEL:
            split[r.served] = split.get(r.served, 0) + r.calls
    t = ctx.t
    credit_chart = charts.stacked_bars(labels, [(m, credit[m]) for m in models], unit="Credit",
                                       title=t["credit_per_day"], fmt="{:,.2f}")
    token_chart = charts.stacked_bars(labels, [(t[k], tokens[k]) for k in kinds], unit="tokens",
                                      title=t["tokens_per_day"])
    totals = [{"model": req, "served": served, **v} for (req, served), v in sorted(per_model.items())]
    return render(ctx, "usage.html", days=days, ranges=RANGES, since=since, until=until, has_data=bool(rows),
                  credit_chart=credit_chart, credit_legend=charts.legend(models), token_chart=token_chart,
                  token_legend=charts.legend([t[k] for k in kinds]), totals=totals,
                  total_charged=sum(v["charged"] for v in totals), split=sorted(split.items()),
                  split_total=sum(split.values()), q_from=ctx.q("from"), q_to=ctx.q("to"))


def call_filter(ctx: Ctx, account_id: int | None) -> queries.CallFilter:
    return queries.CallFilter(
        account_id=account_id, model=ctx.q("model")[:128] or None, status=ctx.q("status")[:24] or None,
        trace_id=ctx.q("trace")[:80] or None, since=date_param(ctx.q("from"), "from"),
        until=date_param(ctx.q("to"), "to", end=True), before_id=int_param(ctx.q("before"), "before"))


@page("holder")
async def calls(ctx: Ctx) -> Response:
    f = call_filter(ctx, _account_id(ctx))
    async with ctx.state.sessions() as s:
        rows = await queries.calls(s, f, CALLS_PAGE + 1)
    more = len(rows) > CALLS_PAGE
    rows = rows[:CALLS_PAGE]
    params = {"model": ctx.q("model"), "status": ctx.q("status"), "trace": ctx.q("trace"), "from": ctx.q("from"),
              "to": ctx.q("to")}
    older = {**params, "before": rows[-1].id} if more and rows else None
    return render(ctx, "calls.html", rows=rows, params=params, older=older)


def key_views(ctx: Ctx, rows: Sequence[tuple[ApiKey, str]]) -> list[dict[str, Any]]:
    """Keys as :func:`stepplan.store.keys.key_view` shows them (every per-key setting, status,
    rotation), with ``last_used_at`` from this process's uses not yet written to the batched
    column when they are newer (another worker's are at most ``auth.LAST_USED_EVERY`` s late)."""
    unwritten = ctx.state.gateway.auth.unwritten_uses()
    out = []
    for k, account in rows:
        view = key_store.key_view(k, account, ctx.now)
        view["last_used_at"] = max(view["last_used_at"] or 0, unwritten.get(k.id, 0)) or None
        out.append(view)
    return out


async def _keys_page(ctx: Ctx, new_key: str | None = None) -> Response:
    aid = _account_id(ctx)
    async with ctx.state.sessions() as s:
        account = await queries.account_by_id(s, aid)
        keys = key_views(ctx, [(k, account.name if account else "") for k in await queries.account_keys(s, aid)])
    return render(ctx, "keys.html", keys=keys, self_service=ctx.cfg.self_service_keys, new_key=new_key,
                  own_key=ctx.session.key_id if ctx.session else None)


@page("holder")
async def keys(ctx: Ctx) -> Response:
    if ctx.request.method == "GET":
        return await _keys_page(ctx)
    if not ctx.cfg.self_service_keys:
        raise ConsoleError(ctx.t["self_service_off"], 403)
    label = ctx.form.get("name", "")[:128] or None
    async with ctx.state.sessions() as s:
        account = await queries.account_by_id(s, _account_id(ctx))
        if account is None:
            raise ConsoleError("the account no longer exists", 404)
        row, key = await acc.create_key(s, account, label)
        await record(s, await actor(ctx, s), "key.create", f"key:{row.id}", None,
                     key_store.key_view(row, account.name, ctx.now), ctx.now)
        await s.commit()
    await ctx.state.gateway.auth.announce()
    return await _keys_page(ctx, new_key=key)


@page("holder")
async def revoke_key(ctx: Ctx) -> Response:
    if not ctx.cfg.self_service_keys:
        raise ConsoleError(ctx.t["self_service_off"], 403)
    key_id = int_param(ctx.request.path_params["key_id"], "key id", lo=1)
    assert key_id is not None
    async with ctx.state.sessions() as s:
        row = await queries.key_of_account(s, key_id, _account_id(ctx))
        if row is None:  # another account's key looks exactly like a missing one
            raise ConsoleError(f"no key with id {key_id} in your account", 404)
        account = await queries.account_by_id(s, _account_id(ctx))
        name = account.name if account else ""
        before = key_store.key_view(row, name, ctx.now)
        who = await actor(ctx, s)  # before the revocation: the holder may be revoking the key it signed in with
        if await acc.revoke_key(s, key_id):
            await s.refresh(row)
            await record(s, who, "key.revoke", f"key:{key_id}", before, key_store.key_view(row, name, ctx.now),
                         ctx.now)
        await s.commit()
    await ctx.state.gateway.auth.announce()  # every process drops the key at once (Redis), this one now
    return redirect(ctx, "/console/keys")


@page("holder")
async def setup(ctx: Ctx) -> Response:
    catalog = ctx.state.settings.catalog
    ids = [m.id for m in catalog.public()]
    model = "step-3.5-flash" if "step-3.5-flash" in ids else (ids[0] if ids else "step-3.5-flash")
    base = base_url(ctx)
    return render(ctx, "setup.html", base=base, items=snippets(base, model))

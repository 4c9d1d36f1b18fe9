"""Operator pages (admin token): Accounts (search, create, subscribe/upgrade/downgrade and
top-ups with a preview of the amount before confirming, stop auto-renewal), Keys across accounts
(with their per-key settings: set or clear limits, rotate with a grace), Ledger (search, check)
and Health. Writes go through the same billing and store functions as the CLI and the admin API,
each with its audit record in the same transaction (actor ``console:<admin token name>``); key
changes are announced on the revocation channel after they commit. A preview runs the real
function in a transaction that is rolled back.

Sign-in takes any admin token the admin API takes (the same check,
:func:`stepplan.store.admin_tokens.verify_admin_token`); a ``read`` token gets the pages
read-only (no forms; a POST is refused with 403)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from ..api.usage import billing_config
from ..billing import subscriptions
from ..billing.check import check_ledger
from ..billing.plans import PERIODS, yuan
from ..billing.pricing import credits_str
from ..billing.usage import account_usage
from ..key_settings import SETTINGS, SettingError, parse_changes, parse_duration
from ..observability.health import readiness
from ..store import accounts as acc
from ..store import keys as key_store
from ..store.admin_tokens import active_token, any_tokens, verify_admin_token
from ..store.audit_log import record, subscription_state
from . import charts, queries
from . import security as sec
from .holder import ROUTER_MODEL, call_filter, key_views, signin_form, start_session, throttle
from .web import ConsoleError, Ctx, actor, admin_fp, int_param, limiter, log, page, redirect, render

LEDGER_PAGE = 100


@page(None)
async def signin(ctx: Ctx) -> Response:
    env_token = ctx.state.settings.admin_token
    if not env_token:
        async with ctx.state.sessions() as s:
            if not await any_tokens(s):
                raise ConsoleError("operator sign-in is off: this gateway has no admin token (STEPPLAN_ADMIN_TOKEN "
                                   "or 'stepplan admin-token create')", 404)
    if ctx.request.method == "GET":
        return await signin_form(ctx, "admin_signin.html")
    ip = throttle(ctx)
    found = await verify_admin_token(ctx.state.sessions, env_token, ctx.form.get("admin_token", ""))
    if found is None:
        limiter(ctx.request).failed(ip, ctx.now)
        log.info("console: failed %s sign-in from %s", "operator", ip)
        raise ConsoleError("that admin token is not valid or has been revoked", 401)
    limiter(ctx.request).succeeded(ip)
    async with ctx.state.sessions() as s:
        if found.token_id is None:
            fp = admin_fp(ctx)
        else:
            row = await active_token(s, found.token_id)
            if row is None:  # revoked between the check and here
                raise ConsoleError("that admin token is not valid or has been revoked", 401)
            fp = sec.db_token_fingerprint(ctx.key, row)
        session = await sec.open_session(s, "operator", ctx.now, int(ctx.cfg.session_hours * 3600),
                                         admin_fp=fp, admin_name=found.name, scope=found.scope)
        await s.commit()
    log.info("console: operator sign-in with admin token '%s' (%s) from %s", found.name, found.scope, ip)
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
                a = await acc.create_account(s, name)
            except acc.AccountExists as exc:
                raise ConsoleError(str(exc), 409) from None
            await record(s, await actor(ctx, s), "account.create", f"account:{name}", None,
                         {"id": a.id, "name": name}, ctx.now)
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
        keys = key_views(ctx, [(k, a.name) for k in await queries.account_keys(s, a.id)])
        await s.commit()
    buckets = []
    for b in view["plan_credit_rate_limit"]["credit_buckets"]:
        total, residual = int(b["credit_total_micro"]), int(b["credit_residual_micro"])
        buckets.append({**b, "bar": charts.left_bar(residual / total if total else 0.0)})
    return render(ctx, "admin_account.html", account=a, sub=view["subscription"],
                  lim=view["plan_credit_rate_limit"], buckets=buckets, keys=keys,
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
        before = await subscription_state(s, a.id)
        try:
            result = await subscriptions.subscribe(s, cfg, a.id, plan, period, ctx.now, auto)
        except subscriptions.BillingError as exc:
            await s.rollback()
            raise ConsoleError(str(exc)) from None
        if confirm:
            await record(s, await actor(ctx, s), "subscription.set", f"account:{a.name}", before,
                         await subscription_state(s, a.id), ctx.now)
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
            await record(s, await actor(ctx, s), "topup.create", f"account:{a.name}", None,
                         {"bucket_id": pot.id, "pack": pack, "credits": credits_str(pot.total)}, ctx.now)
            await s.commit()
        else:
            await s.rollback()
    if confirm:
        return redirect(ctx, account_url(name) + "?done=topup")
    return render(ctx, "admin_preview.html", account=name, url=account_url(name), what="topup", result=info,
                  fields={"pack": pack})


@page("operator")
async def cancel_renewal(ctx: Ctx) -> Response:
    """Stop the subscription's auto-renewal (the term runs to its end), as ``DELETE
    /admin/v1/accounts/{name}/subscription`` does."""
    name = ctx.request.path_params["name"]
    cfg = billing_config(ctx.request)
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        before = await subscription_state(s, a.id)
        try:
            await subscriptions.cancel(s, cfg, a.id, ctx.now)
        except subscriptions.BillingError as exc:
            await s.rollback()
            raise ConsoleError(str(exc)) from None
        await record(s, await actor(ctx, s), "subscription.cancel", f"account:{a.name}", before,
                     await subscription_state(s, a.id), ctx.now)
        await s.commit()
    return redirect(ctx, account_url(name) + "?done=auto_renew_off")


@page("operator")
async def create_key(ctx: Ctx) -> Response:
    name = ctx.form.get("account", "") or ctx.request.path_params.get("name", "")
    label = ctx.form.get("name", "")[:128] or None
    async with ctx.state.sessions() as s:
        a = await _account(s, name)
        row, key = await acc.create_key(s, a, label)
        await record(s, await actor(ctx, s), "key.create", f"key:{row.id}", None,
                     key_store.key_view(row, a.name, ctx.now), ctx.now)
        await s.commit()
    await ctx.state.gateway.auth.announce()
    return render(ctx, "admin_new_key.html", account=a.name, url=account_url(a.name), key=key, row=row,
                  replaces=None, old_until=None)


def _key_id(ctx: Ctx) -> int:
    key_id = int_param(ctx.request.path_params["key_id"], "key id", lo=1)
    assert key_id is not None
    return key_id


@page("operator")
async def revoke_key(ctx: Ctx) -> Response:
    key_id = _key_id(ctx)
    async with ctx.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        revoked = False
        if found is not None:
            row, account_name = found
            before = key_store.key_view(row, account_name, ctx.now)
            revoked = await acc.revoke_key(s, key_id)
            if revoked:
                await s.refresh(row)
                await record(s, await actor(ctx, s), "key.revoke", f"key:{key_id}", before,
                             key_store.key_view(row, account_name, ctx.now), ctx.now)
        await s.commit()
    if not revoked:
        raise ConsoleError(f"no active key with id {key_id}", 404)
    await ctx.state.gateway.auth.announce()  # every process drops the key at once (Redis), this one now
    back = ctx.form.get("next", "")
    return redirect(ctx, back if back.startswith("/console/admin/") and "//" not in back else "/console/admin/keys")


@page("operator")
async def keys(ctx: Ctx) -> Response:
    name = ctx.q("account")[:128]
    async with ctx.state.sessions() as s:
        a = await _account(s, name) if name else None
        rows = key_views(ctx, await acc.list_keys(s, a))
    return render(ctx, "admin_keys.html", rows=rows, account=name, url=account_url)


async def _key_page(ctx: Ctx, key_id: int, status: int = 200, error: str | None = None,
                    form: dict[str, str] | None = None) -> Response:
    async with ctx.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        if found is None:
            raise ConsoleError(f"no key with id {key_id}", 404)
        view = key_views(ctx, [found])[0]
    models = [m.id for m in ctx.state.settings.catalog.public()]
    return render(ctx, "admin_key.html", status=status, k=view, url=account_url(found[1]), models=models,
                  error=error, form=form or {}, done=ctx.q("done")[:64], settings=SETTINGS)


@page("operator")
async def key(ctx: Ctx) -> Response:
    return await _key_page(ctx, _key_id(ctx))


def _form_changes(ctx: Ctx) -> dict[str, Any]:
    """The limits form → settings as the admin API's PATCH body has them: a blank field leaves the
    setting as it is, ``clear_<name>`` clears it (None), anything else is parsed by key_settings."""
    values: dict[str, Any] = {}
    for name in SETTINGS:
        raw = ctx.form.get(name, "")
        if ctx.form.get(f"clear_{name}") == "1":
            values[name] = None
        elif raw:
            if name == "labels":  # one key=value per line (a value may contain commas)
                values[name] = [line.strip() for line in raw.splitlines() if line.strip()]
            else:
                values[name] = raw
    return values


@page("operator")
async def key_limits(ctx: Ctx) -> Response:
    """Set or clear a key's settings: the same parsing (key_settings) and update (store.keys.update_key)
    as ``PATCH /admin/v1/keys/{id}`` and ``stepplan keys update``."""
    key_id = _key_id(ctx)
    models = [m.id for m in ctx.state.settings.catalog.public()]
    try:
        changes = parse_changes(_form_changes(ctx), ctx.now, models, clearing=True)
    except SettingError as exc:
        return await _key_page(ctx, key_id, 400, str(exc), ctx.form)
    if not changes:
        return await _key_page(ctx, key_id, 400, "nothing to change: fill in or clear at least one setting",
                               ctx.form)
    async with ctx.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        if found is None:
            raise ConsoleError(f"no key with id {key_id}", 404)
        row, account_name = found
        before = key_store.key_view(row, account_name, ctx.now)
        if isinstance(changes.get("labels"), dict):
            changes["labels"] = {**before["labels"], **changes["labels"]}
        try:
            row = await key_store.update_key(s, key_id, changes, ctx.now)
        except key_store.KeyNotFound as exc:
            raise ConsoleError(str(exc), 404) from None
        await record(s, await actor(ctx, s), "key.update", f"key:{key_id}", before,
                     key_store.key_view(row, account_name, ctx.now), ctx.now)
        await s.commit()
    await ctx.state.gateway.auth.announce()
    return redirect(ctx, f"/console/admin/keys/{key_id}?done=updated")


@page("operator")
async def rotate_key(ctx: Ctx) -> Response:
    """A new key with the same settings (shown once); the old one works for the grace."""
    key_id = _key_id(ctx)
    raw = ctx.form.get("grace", "") or "24h"
    try:
        grace = parse_duration(raw, "grace")
    except ValueError as exc:
        raise ConsoleError(str(exc)) from None
    async with ctx.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        if found is None:
            raise ConsoleError(f"no key with id {key_id}", 404)
        before = key_store.key_view(found[0], found[1], ctx.now)
        try:
            old, new, secret = await key_store.rotate_key(s, key_id, grace, ctx.now)
        except key_store.KeyNotFound as exc:
            raise ConsoleError(str(exc), 404) from None
        except ValueError as exc:
            raise ConsoleError(str(exc), 409) from None
        old_view = key_store.key_view(old, found[1], ctx.now)
        await record(s, await actor(ctx, s), "key.rotate", f"key:{key_id}", before,
                     {**old_view, "new_key_id": new.id}, ctx.now)
        await s.commit()
    await ctx.state.gateway.auth.announce()
    until = old_view["expires_at"] if old_view["revoked_at"] is None else None
    return render(ctx, "admin_new_key.html", account=found[1], url=account_url(found[1]), key=secret, row=new,
                  replaces=key_id, old_until=until)


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

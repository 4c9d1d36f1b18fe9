"""The admin API under ``/admin/v1/``: accounts, keys, subscriptions, top-ups, usage.

Protected by admin tokens (``Authorization: Bearer <token>`` or ``x-admin-token``):
``STEPPLAN_ADMIN_TOKEN`` (a write token) and the tokens made by ``stepplan admin-token
create`` (stored hashed; scope ``read``: GET only, ``write``: everything). With no token of
any kind the whole API answers 404, as if it did not exist. Every change is written to the
audit log in its own transaction. Key settings (``expires``, ``models``, ``rpm``,
``concurrency``, ``credit_limit_daily``, ``credit_limit_monthly``, ``ip``, ``labels``): see
:mod:`stepplan.key_settings`. Errors use the OpenAI error shape.

    GET    /admin/v1/plans
    GET    /admin/v1/accounts                      POST {"name"}
    GET    /admin/v1/accounts/{name}               (account, plan, buckets)
    GET    /admin/v1/accounts/{name}/keys          POST {"name"?, settings?} → the key, shown once
    GET    /admin/v1/keys?account=NAME             (with limits and last use)
    GET    /admin/v1/keys/{id}                     PATCH {settings; null clears one}  DELETE (revoke)
    POST   /admin/v1/keys/{id}/rotate              {"grace": "24h"} → the new key, shown once
    GET    /admin/v1/audit?since=&limit=           (the audit log, oldest first)
    GET    /admin/v1/accounts/{name}/subscription  POST {"plan", "period"?, "auto_renew"?}
                                                   DELETE (stop auto-renewal)
    POST   /admin/v1/accounts/{name}/topups        {"pack"}
    GET    /admin/v1/accounts/{name}/usage?from=&to=&model=
    GET    /admin/v1/ledger/check
    GET    /admin/v1/ledger/entries?account=NAME&limit=100   (newest first)
    GET    /admin/v1/upstreams                     (each pool member's health, this process)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..billing import subscriptions
from ..billing.check import check_ledger
from ..billing.plans import yuan
from ..billing.pricing import credits_str
from ..billing.usage import account_usage
from ..errors import AuthError, InvalidRequest, NotFound, PermissionDenied
from ..key_settings import SETTINGS, SettingError, parse_changes, parse_duration, parse_since
from ..store import accounts as acc
from ..store import keys as key_store
from ..store import ledger
from ..store.admin_tokens import any_tokens, verify_admin_token
from ..store.audit_log import list_audit, record, subscription_state
from .common import read_json
from .responses import JSONResponse
from .usage import billing_clock, billing_config, parse_time


async def _guard(request: HTTPRequest) -> str:
    """Admit an admin request: the actor recorded in the audit log (``admin:<token name>``), or
    404 when no admin token of any kind exists, 401 for a missing, unknown or revoked token, and
    403 for a read token on anything but GET."""
    env_token = request.app.state.settings.admin_token
    h = request.headers
    given = h.get("x-admin-token")
    auth = h.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    found = await verify_admin_token(request.app.state.sessions, env_token, given)
    if found is None:
        async with request.app.state.sessions() as s:
            if not env_token and not await any_tokens(s):
                raise NotFound(f"no route for {request.method} {request.url.path}")
        raise AuthError("invalid admin token: send 'Authorization: Bearer <admin token>' "
                        "(STEPPLAN_ADMIN_TOKEN or one made by 'stepplan admin-token create')")
    if request.method not in ("GET", "HEAD") and not found.can_write:
        raise PermissionDenied(f"admin token '{found.name}' has the read scope; {request.method} needs a write "
                               "token")
    return f"admin:{found.name}"


async def _body(request: HTTPRequest) -> dict[str, Any]:
    body, _ = await read_json(request, 1024 * 1024)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _str(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty string", param=name)
    return v


async def _account(s: Any, name: str) -> Any:
    a = await acc.get_account(s, name)
    if a is None:
        raise NotFound(f"no account named '{name}'")
    return a


def _key_row(k: Any, account: str) -> dict[str, Any]:
    return {"id": k.id, "account": account, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
            "revoked_at": k.revoked_at}


async def plans(request: HTTPRequest) -> Response:
    await _guard(request)
    cfg = billing_config(request)
    return JSONResponse({
        "plans": [{"id": p.id, "name": p.name, "monthly_credits": credits_str(p.monthly_credits),
                   "prices": {k: yuan(v) for k, v in p.prices.items()}, "priority_rate": p.priority,
                   "concurrency": p.concurrency, "rpm": p.rpm, "window_5h_credits": credits_str(p.window_5h),
                   "window_week_credits": credits_str(p.window_week)} for p in cfg.plans.values()],
        "packs": [{"id": k.id, "name": k.name, "credits": credits_str(k.credits), "price": yuan(k.price),
                   "days": k.days} for k in cfg.packs.values()],
    })


async def accounts(request: HTTPRequest) -> Response:
    actor = await _guard(request)
    async with request.app.state.sessions() as s:
        if request.method == "POST":
            name = _str(await _body(request), "name")
            assert name is not None
            try:
                a = await acc.create_account(s, name)
            except acc.AccountExists as exc:
                raise InvalidRequest(str(exc), param="name") from None
            await record(s, actor, "account.create", f"account:{name}", None, {"id": a.id, "name": name},
                         billing_clock(request).now())
            await s.commit()
            return JSONResponse({"id": a.id, "name": a.name, "created_at": a.created_at}, status_code=201)
        rows = await acc.list_accounts(s)
        return JSONResponse({"data": [{"id": a.id, "name": a.name, "created_at": a.created_at} for a in rows]})


async def account(request: HTTPRequest) -> Response:
    await _guard(request)
    cfg, now = billing_config(request), billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        view = await account_usage(s, cfg, a.id, now)
        await s.commit()
    return JSONResponse({"id": a.id, "name": a.name, "created_at": a.created_at, **view})


def _key_settings(request: HTTPRequest, body: dict[str, Any], clearing: bool) -> dict[str, Any]:
    """The per-key settings in an admin request body → api_keys columns (PATCH: null clears one)."""
    known = {"name", *SETTINGS}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0]}'; key settings are: {', '.join(SETTINGS)}",
                             param=unknown[0])
    for name in SETTINGS:
        raw = body.get(name)
        if name in ("models", "ip") and raw is not None and not isinstance(raw, (str, list)):
            raise InvalidRequest(f"'{name}' must be a list of strings", param=name)
        if name == "labels" and raw is not None and not isinstance(raw, dict):
            raise InvalidRequest("'labels' must be an object of strings", param=name)
    models = [m.id for m in request.app.state.settings.catalog.public()]
    try:
        return parse_changes(body, billing_clock(request).now(), models, clearing=clearing)
    except SettingError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


def _key_id(request: HTTPRequest) -> int:
    raw = request.path_params["key_id"]
    if not raw.isdigit():
        raise InvalidRequest(f"key id must be a number, not {raw!r}", param="key_id")
    return int(raw)


async def account_keys(request: HTTPRequest) -> Response:
    actor = await _guard(request)
    now = billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        if request.method == "POST":
            body = await _body(request)
            label = _str(body, "name", required=False)
            settings = _key_settings(request, body, clearing=False)
            row, key = await acc.create_key(s, a, label, settings)
            view = key_store.key_view(row, a.name, now)
            await record(s, actor, "key.create", f"key:{row.id}", None, view, now)
            await s.commit()
            return JSONResponse({**view, "key": key}, status_code=201)
        return JSONResponse({"data": [key_store.key_view(k, n, now) for k, n in await acc.list_keys(s, a)]})


async def keys(request: HTTPRequest) -> Response:
    await _guard(request)
    name = request.query_params.get("account")
    now = billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, name) if name else None
        return JSONResponse({"data": [key_store.key_view(k, n, now) for k, n in await acc.list_keys(s, a)]})


async def key(request: HTTPRequest) -> Response:
    """GET a key, PATCH its settings (null clears one), DELETE revokes it."""
    actor = await _guard(request)
    key_id = _key_id(request)
    now = billing_clock(request).now()
    body = await _body(request) if request.method == "PATCH" else {}
    async with request.app.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        if found is None:
            raise NotFound(f"no key with id {key_id}")
        row, account_name = found
        before = key_store.key_view(row, account_name, now)
        if request.method == "GET":
            return JSONResponse(before)
        if request.method == "PATCH":
            changes = _key_settings(request, body, clearing=True)
            if "name" in body:
                changes["name"] = _str(body, "name", required=False)
            if not changes:
                raise InvalidRequest("nothing to change: send at least one key setting")
            if isinstance(changes.get("labels"), dict):
                changes["labels"] = {**before["labels"], **changes["labels"]}
            try:
                row = await key_store.update_key(s, key_id, changes, now)
            except key_store.KeyNotFound as exc:
                raise NotFound(str(exc)) from None
            after = key_store.key_view(row, account_name, now)
            await record(s, actor, "key.update", f"key:{key_id}", before, after, now)
            await s.commit()
            await request.app.state.gateway.auth.announce()
            return JSONResponse(after)
        revoked = await acc.revoke_key(s, key_id)
        if revoked:
            await s.refresh(row)
            await record(s, actor, "key.revoke", f"key:{key_id}", before, key_store.key_view(row, account_name, now),
                         now)
        await s.commit()
    if not revoked:
        raise NotFound(f"no active key with id {key_id}")
    await request.app.state.gateway.auth.announce()
    return JSONResponse({"id": key_id, "revoked": True})


async def rotate(request: HTTPRequest) -> Response:
    """POST {"grace": "24h"}: a new key with the same settings (shown once); the old one works until the grace ends."""
    actor = await _guard(request)
    key_id = _key_id(request)
    body = await _body(request) if request.headers.get("content-length", "0") != "0" else {}
    raw = body.get("grace", "24h")
    try:
        grace = parse_duration(raw, "grace") if isinstance(raw, str) else -1
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="grace") from None
    if grace < 0:
        raise InvalidRequest("'grace' must be a duration such as 24h, 30m or 0s", param="grace")
    now = billing_clock(request).now()
    async with request.app.state.sessions() as s:
        found = await key_store.get_key(s, key_id)
        if found is None:
            raise NotFound(f"no key with id {key_id}")
        before = key_store.key_view(found[0], found[1], now)
        try:
            old, new, secret = await key_store.rotate_key(s, key_id, grace, now)
        except key_store.KeyNotFound as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        old_view, new_view = key_store.key_view(old, found[1], now), key_store.key_view(new, found[1], now)
        await record(s, actor, "key.rotate", f"key:{key_id}", before, {**old_view, "new_key_id": new.id}, now)
        await s.commit()
    await request.app.state.gateway.auth.announce()
    until = old_view["expires_at"] if old_view["revoked_at"] is None else None
    return JSONResponse({**new_view, "key": secret, "replaces": key_id, "old_key_valid_until": until},
                        status_code=201)


async def audit(request: HTTPRequest) -> Response:
    """GET ?since=ISO date or duration (24h)&limit=N: audit records, oldest first."""
    await _guard(request)
    qp = request.query_params
    raw_limit = qp.get("limit", "1000")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100_000:
        raise InvalidRequest("'limit' must be a number from 1 to 100000", param="limit")
    try:
        since = parse_since(qp.get("since"), billing_clock(request).now())
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    async with request.app.state.sessions() as s:
        return JSONResponse({"data": await list_audit(s, since, int(raw_limit))})


async def subscription(request: HTTPRequest) -> Response:
    actor = await _guard(request)
    cfg, now = billing_config(request), billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        try:
            if request.method == "POST":
                body = await _body(request)
                plan = _str(body, "plan")
                period = _str(body, "period", required=False)
                auto = body.get("auto_renew")
                if auto is not None and not isinstance(auto, bool):
                    raise InvalidRequest("'auto_renew' must be true or false", param="auto_renew")
                assert plan is not None
                before = await subscription_state(s, a.id)
                result = await subscriptions.subscribe(s, cfg, a.id, plan, period, now, auto)
                await record(s, actor, "subscription.set", f"account:{a.name}", before,
                             await subscription_state(s, a.id), now)
                await s.commit()
                return JSONResponse(result.as_dict())
            if request.method == "DELETE":
                before = await subscription_state(s, a.id)
                sub = await subscriptions.cancel(s, cfg, a.id, now)
                await record(s, actor, "subscription.cancel", f"account:{a.name}", before,
                             await subscription_state(s, a.id), now)
                await s.commit()
                return JSONResponse({"subscription_id": sub.id, "auto_renew": False, "expired_at": sub.term_end})
        except subscriptions.BillingError as exc:
            raise InvalidRequest(str(exc)) from None
        view = await account_usage(s, cfg, a.id, now)
        await s.commit()
    return JSONResponse({"subscription": view["subscription"],
                         "plan_credit_rate_limit": view["plan_credit_rate_limit"]})


async def topups(request: HTTPRequest) -> Response:
    actor = await _guard(request)
    cfg, now = billing_config(request), billing_clock(request).now()
    body = await _body(request)
    pack = _str(body, "pack")
    assert pack is not None
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        try:
            pot = await subscriptions.topup(s, cfg, a.id, pack, now)
        except subscriptions.BillingError as exc:
            raise InvalidRequest(str(exc), param="pack") from None
        await record(s, actor, "topup.create", f"account:{a.name}", None,
                     {"bucket_id": pot.id, "pack": pack, "credits": credits_str(pot.total)}, now)
        await s.commit()
    return JSONResponse({"bucket_id": pot.id, "pack": pack, "credits": credits_str(pot.total),
                         "expire_at": pot.expires_at, "price": yuan(cfg.pack(pack).price)}, status_code=201)


async def account_usage_route(request: HTTPRequest) -> Response:
    await _guard(request)
    qp = request.query_params
    since, until = parse_time(qp.get("from"), "from"), parse_time(qp.get("to"), "to")
    cfg, now = billing_config(request), billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        view = await account_usage(s, cfg, a.id, now, since=since, until=until, model=qp.get("model"))
        await s.commit()
    return JSONResponse(view)


async def ledger_check(request: HTTPRequest) -> Response:
    await _guard(request)
    cfg = billing_config(request)
    async with request.app.state.sessions() as s:
        report = await check_ledger(s, cfg.owner_ttl_seconds, cfg.lease_idle_seconds)
    return JSONResponse(report.as_dict())


async def ledger_entries(request: HTTPRequest) -> Response:
    await _guard(request)
    qp = request.query_params
    raw_limit = qp.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
        raise InvalidRequest("'limit' must be a number from 1 to 10000", param="limit")
    async with request.app.state.sessions() as s:
        account_id = (await _account(s, qp["account"])).id if qp.get("account") else None
        entries, rows = await ledger.recent_entries(s, int(raw_limit), account_id)
    charges: dict[str, list[dict[str, Any]]] = {}
    for ch in rows:
        charges.setdefault(ch.request_id, []).append({"bucket_id": ch.pot_id, "micro": str(ch.amount)})
    cols = [c.name for c in ledger.ENTRIES.columns]
    data = []
    for e in entries:
        row = {c: getattr(e, c) for c in cols}
        if e.pot_id is not None:
            charges.setdefault(e.request_id, []).insert(0, {"bucket_id": e.pot_id, "micro": str(e.pot_amount)})
        for c in ("cost", "charged", "uncollected", "reserved", "rate_input", "rate_cache", "rate_output",
                  "pot_amount"):
            row[c] = str(row[c])  # micro-credit integers can exceed JSON's safe integer range
        row["charges"] = charges.get(e.request_id, [])
        data.append(row)
    return JSONResponse({"data": data})


async def upstreams(request: HTTPRequest) -> Response:
    await _guard(request)
    return JSONResponse({"data": request.app.state.gateway.engines.upstream_states()})


async def not_found(request: HTTPRequest) -> Response:
    await _guard(request)
    raise NotFound(f"no route for {request.method} {request.url.path}")


ROUTES: list = [
    ("/admin/v1/plans", plans, ["GET"]),
    ("/admin/v1/accounts", accounts, ["GET", "POST"]),
    ("/admin/v1/accounts/{name}", account, ["GET"]),
    ("/admin/v1/accounts/{name}/keys", account_keys, ["GET", "POST"]),
    ("/admin/v1/accounts/{name}/subscription", subscription, ["GET", "POST", "DELETE"]),
    ("/admin/v1/accounts/{name}/topups", topups, ["POST"]),
    ("/admin/v1/accounts/{name}/usage", account_usage_route, ["GET"]),
    ("/admin/v1/keys", keys, ["GET"]),
    ("/admin/v1/keys/{key_id}", key, ["GET", "PATCH", "DELETE"]),
    ("/admin/v1/keys/{key_id}/rotate", rotate, ["POST"]),
    ("/admin/v1/audit", audit, ["GET"]),
    ("/admin/v1/ledger/check", ledger_check, ["GET"]),
    ("/admin/v1/ledger/entries", ledger_entries, ["GET"]),
    ("/admin/v1/upstreams", upstreams, ["GET"]),
    ("/admin/v1/{rest:path}", not_found, ["GET", "POST", "PUT", "PATCH", "DELETE"]),
]

"""The admin API under ``/admin/v1/``: accounts, keys, subscriptions, top-ups, usage.

Protected by ``STEPPLAN_ADMIN_TOKEN`` (``Authorization: Bearer <token>`` or
``x-admin-token``). With no token configured the whole API answers 404, as if it did
not exist. Errors use the OpenAI error shape.

    GET    /admin/v1/plans
    GET    /admin/v1/accounts                      POST {"name"}
    GET    /admin/v1/accounts/{name}               (account, plan, buckets)
    GET    /admin/v1/accounts/{name}/keys          POST {"name"?} → the key, shown once
    GET    /admin/v1/keys?account=NAME             DELETE /admin/v1/keys/{id} (revoke)
    GET    /admin/v1/accounts/{name}/subscription  POST {"plan", "period"?, "auto_renew"?}
                                                   DELETE (stop auto-renewal)
    POST   /admin/v1/accounts/{name}/topups        {"pack"}
    GET    /admin/v1/accounts/{name}/usage?from=&to=&model=
    GET    /admin/v1/ledger/check
    GET    /admin/v1/ledger/entries?account=NAME&limit=100   (newest first)
    GET    /admin/v1/upstreams                     (each pool member's health, this process)
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..billing import subscriptions
from ..billing.check import check_ledger
from ..billing.plans import yuan
from ..billing.pricing import credits_str
from ..billing.usage import account_usage
from ..errors import AuthError, InvalidRequest, NotFound
from ..store import accounts as acc
from ..store import ledger
from .common import read_json
from .responses import JSONResponse
from .usage import billing_clock, billing_config, parse_time


def _guard(request: HTTPRequest) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise NotFound(f"no route for {request.method} {request.url.path}")
    h = request.headers
    given = h.get("x-admin-token")
    auth = h.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise AuthError("invalid admin token: send 'Authorization: Bearer <STEPPLAN_ADMIN_TOKEN>'")


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
    _guard(request)
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
    _guard(request)
    async with request.app.state.sessions() as s:
        if request.method == "POST":
            name = _str(await _body(request), "name")
            assert name is not None
            try:
                a = await acc.create_account(s, name)
            except acc.AccountExists as exc:
                raise InvalidRequest(str(exc), param="name") from None
            await s.commit()
            return JSONResponse({"id": a.id, "name": a.name, "created_at": a.created_at}, status_code=201)
        rows = await acc.list_accounts(s)
        return JSONResponse({"data": [{"id": a.id, "name": a.name, "created_at": a.created_at} for a in rows]})


async def account(request: HTTPRequest) -> Response:
    _guard(request)
    cfg, now = billing_config(request), billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        view = await account_usage(s, cfg, a.id, now)
        await s.commit()
    return JSONResponse({"id": a.id, "name": a.name, "created_at": a.created_at, **view})


async def account_keys(request: HTTPRequest) -> Response:
    _guard(request)
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        if request.method == "POST":
            label = _str(await _body(request), "name", required=False)
            row, key = await acc.create_key(s, a, label)
            await s.commit()
            return JSONResponse({**_key_row(row, a.name), "key": key}, status_code=201)
        return JSONResponse({"data": [_key_row(k, n) for k, n in await acc.list_keys(s, a)]})


async def keys(request: HTTPRequest) -> Response:
    _guard(request)
    name = request.query_params.get("account")
    async with request.app.state.sessions() as s:
        a = await _account(s, name) if name else None
        return JSONResponse({"data": [_key_row(k, n) for k, n in await acc.list_keys(s, a)]})


async def key(request: HTTPRequest) -> Response:
    _guard(request)
    raw = request.path_params["key_id"]
    if not raw.isdigit():
        raise InvalidRequest(f"key id must be a number, not {raw!r}", param="key_id")
    async with request.app.state.sessions() as s:
        revoked = await acc.revoke_key(s, int(raw))
        await s.commit()
    if not revoked:
        raise NotFound(f"no active key with id {raw}")
    request.app.state.gateway.auth.invalidate()
    return JSONResponse({"id": int(raw), "revoked": True})


async def subscription(request: HTTPRequest) -> Response:
    _guard(request)
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
                result = await subscriptions.subscribe(s, cfg, a.id, plan, period, now, auto)
                await s.commit()
                return JSONResponse(result.as_dict())
            if request.method == "DELETE":
                sub = await subscriptions.cancel(s, cfg, a.id, now)
                await s.commit()
                return JSONResponse({"subscription_id": sub.id, "auto_renew": False, "expired_at": sub.term_end})
        except subscriptions.BillingError as exc:
            raise InvalidRequest(str(exc)) from None
        view = await account_usage(s, cfg, a.id, now)
        await s.commit()
    return JSONResponse({"subscription": view["subscription"],
                         "plan_credit_rate_limit": view["plan_credit_rate_limit"]})


async def topups(request: HTTPRequest) -> Response:
    _guard(request)
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
        await s.commit()
    return JSONResponse({"bucket_id": pot.id, "pack": pack, "credits": credits_str(pot.total),
                         "expire_at": pot.expires_at, "price": yuan(cfg.pack(pack).price)}, status_code=201)


async def account_usage_route(request: HTTPRequest) -> Response:
    _guard(request)
    qp = request.query_params
    since, until = parse_time(qp.get("from"), "from"), parse_time(qp.get("to"), "to")
    cfg, now = billing_config(request), billing_clock(request).now()
    async with request.app.state.sessions() as s:
        a = await _account(s, request.path_params["name"])
        view = await account_usage(s, cfg, a.id, now, since=since, until=until, model=qp.get("model"))
        await s.commit()
    return JSONResponse(view)


async def ledger_check(request: HTTPRequest) -> Response:
    _guard(request)
    cfg = billing_config(request)
    async with request.app.state.sessions() as s:
        report = await check_ledger(s, cfg.owner_ttl_seconds, cfg.lease_idle_seconds)
    return JSONResponse(report.as_dict())


async def ledger_entries(request: HTTPRequest) -> Response:
    _guard(request)
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
    _guard(request)
    return JSONResponse({"data": request.app.state.gateway.engines.upstream_states()})


async def not_found(request: HTTPRequest) -> Response:
    _guard(request)
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
    ("/admin/v1/keys/{key_id}", key, ["DELETE"]),
    ("/admin/v1/ledger/check", ledger_check, ["GET"]),
    ("/admin/v1/ledger/entries", ledger_entries, ["GET"]),
    ("/admin/v1/upstreams", upstreams, ["GET"]),
    ("/admin/v1/{rest:path}", not_found, ["GET", "POST", "PUT", "PATCH", "DELETE"]),
]

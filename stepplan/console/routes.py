"""The console's routes (registered by app.py when ``[console] enabled``)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from . import holder, operators
from . import security as sec
from .web import Ctx, current_session, page, redirect

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in STATIC_TYPES}
_static_cache: dict[str, bytes] = {}


@page(None)
async def index(ctx: Ctx) -> Response:
    s = await current_session(ctx)
    return redirect(ctx, "/console/admin/accounts" if s and s.kind == "operator" else "/console/overview")


async def static(request: HTTPRequest) -> Response:
    """The package's own CSS and script (an allow-list of files: no path is ever joined)."""
    name = request.path_params["name"]
    if name not in _static_cache:
        path = STATIC_FILES.get(name)
        if path is None:
            resp = Response("not found", status_code=404, media_type="text/plain")
            resp.headers.update(sec.HEADERS)
            return resp
        _static_cache[name] = path.read_bytes()
    resp = Response(_static_cache[name], media_type=STATIC_TYPES[Path(name).suffix])
    resp.headers.update(sec.HEADERS)
    resp.headers["cache-control"] = "public, max-age=3600"
    return resp


ROUTES: list = [
    ("/console", index, ["GET"]),
    ("/console/", index, ["GET"]),
    ("/console/static/{name}", static, ["GET"]),
    ("/console/signin", holder.signin, ["GET", "POST"]),
    ("/console/signout", holder.signout, ["POST"]),
    ("/console/overview", holder.overview, ["GET"]),
    ("/console/usage", holder.usage, ["GET"]),
    ("/console/calls", holder.calls, ["GET"]),
    ("/console/keys", holder.keys, ["GET", "POST"]),
    ("/console/keys/{key_id}/revoke", holder.revoke_key, ["POST"]),
    ("/console/setup", holder.setup, ["GET"]),
    ("/console/admin/signin", operators.signin, ["GET", "POST"]),
    ("/console/admin", operators.accounts, ["GET"]),
    ("/console/admin/accounts", operators.accounts, ["GET", "POST"]),
    # {name:path}: an account name may contain "/" (its URL carries it as %2F, which the server decodes).
    ("/console/admin/accounts/{name:path}/subscription/cancel", operators.cancel_renewal, ["POST"]),
    ("/console/admin/accounts/{name:path}/subscription", operators.subscribe, ["POST"]),
    ("/console/admin/accounts/{name:path}/topups", operators.topup, ["POST"]),
    ("/console/admin/accounts/{name:path}/keys", operators.create_key, ["POST"]),
    ("/console/admin/accounts/{name:path}", operators.account, ["GET"]),
    ("/console/admin/keys", operators.keys, ["GET"]),
    ("/console/admin/keys/new", operators.create_key, ["POST"]),
    ("/console/admin/keys/{key_id}", operators.key, ["GET"]),
    ("/console/admin/keys/{key_id}/limits", operators.key_limits, ["POST"]),
    ("/console/admin/keys/{key_id}/rotate", operators.rotate_key, ["POST"]),
    ("/console/admin/keys/{key_id}/revoke", operators.revoke_key, ["POST"]),
    ("/console/admin/ledger", operators.ledger, ["GET"]),
    ("/console/admin/ledger/check", operators.ledger_check, ["GET"]),
    ("/console/admin/health", operators.health, ["GET"]),
]

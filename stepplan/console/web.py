"""The console's request plumbing: the page context (language, session, clock), rendering
with the security headers, form parsing, CSRF checks and the error boundary (every failure
is an error page with a clear message, never a bare 500)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..api.usage import billing_clock
from ..errors import GatewayError
from ..settings import ConsoleConfig
from ..store.models import ApiKey
from . import i18n
from . import security as sec

log = logging.getLogger("stepplan.console")

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 64 * 1024
_env: Any = None


class ConsoleError(Exception):
    """A request the console refuses; the message is shown on the error page."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


@dataclass(slots=True)
class Ctx:
    request: HTTPRequest
    lang: str
    remember_lang: bool
    t: dict[str, str]
    key: bytes  # the console's HMAC key
    now: int
    cfg: ConsoleConfig
    secure: bool
    session: sec.Session | None = None
    form: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> Any:
        return self.request.app.state

    @property
    def csrf(self) -> str:
        return sec.csrf_for(self.key, self.session.token) if self.session else ""

    def q(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()


def env() -> Any:
    global _env
    if _env is None:
        import jinja2

        e = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               auto_reload=False)  # templates ship in the package: no stat per render
        e.filters["ts"] = fmt_time
        e.filters["credits"] = fmt_credits
        e.filters["num"] = lambda v: f"{int(v or 0):,}"
        e.filters["pct"] = lambda v: f"{float(v) * 100:.1f}%"
        e.filters["ms"] = lambda v: "" if v is None else f"{float(v):,.0f} ms"
        e.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})
        _env = e
    return _env


def fmt_time(ts: int | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_credits(micro: int | str | None) -> str:
    """Micro-credits as Credits with up to 6 decimals (exact)."""
    m = int(micro or 0)
    sign, m = ("-" if m < 0 else ""), abs(m)
    whole, frac = divmod(m, 1_000_000)
    return f"{sign}{whole:,}" + (f".{frac:06d}".rstrip("0") if frac else "")


def console_key(request: HTTPRequest) -> bytes:
    state = request.app.state
    key = getattr(state, "console_key", None)
    if key is None:
        key = state.console_key = sec.console_key(state.gateway.signer.secret)
    return key


def limiter(request: HTTPRequest) -> sec.SignInLimiter:
    state = request.app.state
    lim = getattr(state, "console_limiter", None)
    if lim is None:
        cfg = state.settings.console
        lim = state.console_limiter = sec.SignInLimiter(cfg.signin_attempts, cfg.signin_window_seconds)
    return lim


def admin_fp(ctx: Ctx) -> str | None:
    token = ctx.state.settings.admin_token
    return sec.admin_fingerprint(ctx.key, token) if token else None


def make_ctx(request: HTTPRequest) -> Ctx:
    cfg: ConsoleConfig = request.app.state.settings.console
    lang, remember = i18n.pick(request.query_params.get("lang"), request.cookies.get(i18n.LANG_COOKIE),
                               request.headers.get("accept-language"))
    return Ctx(request=request, lang=lang, remember_lang=remember, t=i18n.translator(lang),
               key=console_key(request), now=billing_clock(request).now(), cfg=cfg,
               secure=sec.is_https(request, cfg.trust_proxy))


def finish(ctx: Ctx, response: Response) -> Response:
    for k, v in sec.HEADERS.items():
        response.headers[k] = v
    if ctx.remember_lang:
        response.set_cookie(i18n.LANG_COOKIE, ctx.lang, max_age=365 * 86400, path=sec.COOKIE_PATH,
                            secure=ctx.secure, httponly=True, samesite="strict")
    return response


def render(ctx: Ctx, template: str, status: int = 200, **values: Any) -> Response:
    req = ctx.request
    here = req.url.path
    params = {k: v for k, v in req.query_params.items() if k != "lang"}
    html = env().get_template(template).render(
        t=ctx.t, lang=ctx.lang, session=ctx.session, csrf=ctx.csrf, path=here,
        can_write=ctx.session is not None and ctx.session.can_write,
        lang_url={lg: here + "?" + urlencode({**params, "lang": lg}) for lg in i18n.LANGS}, **values)
    return finish(ctx, HTMLResponse(html, status_code=status))


def redirect(ctx: Ctx, url: str) -> Response:
    return finish(ctx, RedirectResponse(url, status_code=303))


def error_page(ctx: Ctx, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    resp = render(ctx, "error.html", status=status, message=message, status_code=status)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


async def read_form(request: HTTPRequest) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ConsoleError("the console accepts HTML form posts only (application/x-www-form-urlencoded)", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ConsoleError("the form is too large", 413)
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError("the form could not be read") from None
    return {k: v[0].strip() for k, v in parsed.items()}


Page = Callable[[Ctx], Awaitable[Response]]


def page(kind: str | None) -> Callable[[Page], Callable[[HTTPRequest], Awaitable[Response]]]:
    """A console handler: ``kind`` "holder" or "operator" needs that session, "any" either (else a
    redirect to the sign-in page), None needs none. A POST must carry the CSRF token."""

    def wrap(handler: Page) -> Callable[[HTTPRequest], Awaitable[Response]]:
        async def run(request: HTTPRequest) -> Response:
            ctx = make_ctx(request)
            try:
                if kind is not None:
                    ctx.session = await current_session(ctx)
                    if ctx.session is None or kind not in (ctx.session.kind, "any"):
                        ctx.session = None
                        return redirect(ctx, "/console/admin/signin" if kind == "operator" else "/console/signin")
                    if kind == "operator" and request.method == "POST" and not ctx.session.can_write:
                        raise ConsoleError(f"admin token '{ctx.session.admin_name}' has the read scope: the "
                                           "operator pages are read-only; sign in with a write token to change "
                                           "anything", 403)
                if request.method == "POST":
                    ctx.form = await read_form(request)
                    check_csrf(ctx)
                return finish(ctx, await handler(ctx))
            except ConsoleError as exc:
                return error_page(ctx, exc.message, exc.status, exc.headers)
            except GatewayError as exc:
                return error_page(ctx, exc.message, exc.status)
            except Exception:
                trace = request.scope.get("stepplan.trace_id", "")
                log.exception("trace=%s console error on %s %s", trace, request.method, request.url.path)
                return error_page(ctx, f"internal error; quote trace id {trace} when reporting it", 500)

        return run

    return wrap


def check_csrf(ctx: Ctx) -> None:
    given = ctx.form.get("csrf")
    if ctx.session is not None:
        ok = sec.same(given, ctx.csrf)
    else:  # sign-in forms: double-submit cookie
        ok = sec.same(given, ctx.request.cookies.get(sec.PRE_COOKIE))
    if not ok:
        raise ConsoleError("the form's security token is missing or stale (CSRF check failed); "
                           "reload the page and submit again", 403)


async def current_session(ctx: Ctx) -> sec.Session | None:
    token = sec.unsign(ctx.key, ctx.request.cookies.get(sec.SESSION_COOKIE))
    if token is None:
        return None
    async with ctx.state.sessions() as s:
        return await sec.load_session(s, token, ctx.now, ctx.key, admin_fp(ctx))


async def actor(ctx: Ctx, s: AsyncSession) -> str:
    """The audit log's actor of this session: ``console:<admin token name>`` for an operator,
    ``console:key:<prefix of the key signed in with>`` for a key holder."""
    sess = ctx.session
    assert sess is not None
    if sess.kind == "operator":
        return f"console:{sess.admin_name}"
    prefix = (await s.execute(select(ApiKey.prefix).where(ApiKey.id == sess.key_id))).scalar()
    return f"console:key:{prefix}"


def int_param(raw: str, name: str, *, lo: int = 0, hi: int = 2**62) -> int | None:
    if raw == "":
        return None
    if not raw.lstrip("-").isdigit() or not lo <= int(raw) <= hi:
        raise ConsoleError(f"'{name}' must be a whole number from {lo} to {hi}, not {raw[:40]!r}")
    return int(raw)


def date_param(raw: str, name: str, *, end: bool = False) -> int | None:
    """A YYYY-MM-DD date (UTC) as unix seconds: its start, or the next day's start with ``end``."""
    if raw == "":
        return None
    try:
        d = dt.date.fromisoformat(raw)
    except ValueError:
        raise ConsoleError(f"'{name}' must be a date like 2026-01-31, not {raw[:40]!r}") from None
    ts = int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp())
    return ts + 86400 if end else ts


def day_label(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m-%d")


def base_url(ctx: Ctx) -> str:
    if ctx.cfg.base_url:
        return ctx.cfg.base_url.rstrip("/")
    req = ctx.request
    scheme = "https" if ctx.secure else "http"
    host = req.headers.get("host", f"{req.url.hostname}:{req.url.port}")
    if ctx.cfg.trust_proxy and req.headers.get("x-forwarded-host"):
        host = req.headers["x-forwarded-host"].split(",")[0].strip()
    return f"{scheme}://{host}"

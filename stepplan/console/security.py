"""Console security: signed session cookies backed by the ``console_sessions`` table, CSRF
tokens, response headers, and the sign-in rate limit.

* The session cookie is ``token.signature``: a random 256-bit token and its HMAC under a key
  derived from the gateway's signing secret. The table holds the token's SHA-256 only; a
  session ends when it expires (``[console] session_hours``) or is signed out (``revoked_at``),
  in every worker at once. A key holder's session also ends when the key it used is revoked;
  an operator's when the admin token it signed in with stops being accepted: the env token
  (``STEPPLAN_ADMIN_TOKEN``) changes, or the ``stepplan admin-token`` token is revoked. Every
  request re-reads the token's row, so its scope and name are the current ones.
* CSRF: every state-changing form carries a token. Signed in, it is an HMAC of the session
  token (bound to the session); on the sign-in forms it is a double-submit cookie.
* Cookies are HttpOnly, SameSite=Strict, Path=/console, and Secure when the request came over
  HTTPS (or a trusted proxy says it did, ``[console] trust_proxy``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..store.admin_tokens import ENV_NAME, active_token
from ..store.models import AdminToken, ApiKey, ConsoleSession

SESSION_COOKIE = "stepplan_console"
PRE_COOKIE = "stepplan_console_csrf"  # double-submit token of the sign-in forms
COOKIE_PATH = "/console"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def console_key(secret: bytes) -> bytes:
    """The console's own HMAC key, derived from the gateway's signing secret."""
    return hmac.new(secret, b"stepplan-console-v1", hashlib.sha256).digest()


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def sign(key: bytes, token: str) -> str:
    return f"{token}.{hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]}"


def unsign(key: bytes, value: str | None) -> str | None:
    """The token of a well-signed cookie value, else None."""
    if not value or "." not in value:
        return None
    token, _, mac = value.rpartition(".")
    good = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
    return token if hmac.compare_digest(mac.encode(), good.encode()) else None


def csrf_for(key: bytes, token: str) -> str:
    return hmac.new(key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def is_https(request: HTTPRequest, trust_proxy: bool) -> bool:
    if request.url.scheme == "https":
        return True
    return trust_proxy and request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() == "https"


def client_ip(request: HTTPRequest, trust_proxy: bool) -> str:
    if trust_proxy:
        fwd = request.headers.get("x-forwarded-for", "")
        if fwd.strip():
            return fwd.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, secure=secure, httponly=True,
                        samesite="strict")


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict")


def admin_fingerprint(key: bytes, admin_token: str) -> str:
    """The env admin token's fingerprint (64 hex): a session opened with it ends when it changes."""
    return hmac.new(key, b"admin:" + admin_token.encode(), hashlib.sha256).hexdigest()


def db_token_fingerprint(key: bytes, row: AdminToken) -> str:
    """``db:<id>:<mac>`` for a token of ``admin_tokens``: the session re-reads that row (revoked →
    the session ends) and the MAC binds it to the token's hash, not just to a row number."""
    mac = hmac.new(key, b"admin-db:" + row.hash.encode(), hashlib.sha256).hexdigest()[:40]
    return f"db:{row.id}:{mac}"


# ------------------------------------------------------------------------------------------- sessions
@dataclass(frozen=True, slots=True)
class Session:
    token: str
    kind: str  # holder | operator
    account_id: int | None
    key_id: int | None
    expires_at: int
    admin_name: str | None = None  # an operator's admin token: its name (audit actor) and scope
    scope: str | None = None

    @property
    def can_write(self) -> bool:
        return self.kind == "operator" and self.scope == "write"


async def open_session(s: AsyncSession, kind: str, now: int, ttl: int, *, account_id: int | None = None,
                       key_id: int | None = None, admin_fp: str | None = None, admin_name: str | None = None,
                       scope: str | None = None) -> Session:
    """A new session row (expired rows are swept on the way); the caller commits."""
    await s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now - 86400))
    token = secrets.token_urlsafe(32)
    s.add(ConsoleSession(id=digest(token), kind=kind, account_id=account_id, key_id=key_id, admin_fp=admin_fp,
                         created_at=now, expires_at=now + ttl))
    return Session(token, kind, account_id, key_id, now + ttl, admin_name, scope)


async def load_session(s: AsyncSession, token: str, now: int, key: bytes, env_fp: str | None) -> Session | None:
    """The live session of ``token``: not expired, not signed out; a holder's key not revoked;
    an operator's admin token still accepted (``env_fp``: the env token's current fingerprint,
    None when unset; a database token: its row not revoked)."""
    row = (await s.execute(select(ConsoleSession).where(ConsoleSession.id == digest(token)))).scalar_one_or_none()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    if row.kind == "operator":
        fp = row.admin_fp or ""
        if fp.startswith("db:"):
            raw_id = fp.split(":")[1]
            tok = await active_token(s, int(raw_id)) if raw_id.isdigit() else None
            if tok is None or not same(fp, db_token_fingerprint(key, tok)):
                return None
            return Session(token, row.kind, None, None, row.expires_at, tok.name, tok.scope)
        if env_fp is None or not same(fp, env_fp):
            return None
        return Session(token, row.kind, None, None, row.expires_at, ENV_NAME, "write")
    elif row.kind == "holder":
        q = select(ApiKey.id).where(ApiKey.id == row.key_id, ApiKey.account_id == row.account_id,
                                    ApiKey.revoked_at.is_(None))
        if (await s.execute(q)).first() is None:
            return None
    else:
        return None
    return Session(token, row.kind, row.account_id, row.key_id, row.expires_at)


async def close_session(s: AsyncSession, token: str, now: int) -> None:
    await s.execute(update(ConsoleSession).where(ConsoleSession.id == digest(token))
                    .values(revoked_at=now))


# ------------------------------------------------------------------------------------------- rate limit
class SignInLimiter:
    """Failed sign-ins per client IP within a sliding window (the billing clock's seconds);
    once ``attempts`` failed, further sign-ins from that IP are refused until the oldest ages
    out. Per process: with N workers an IP gets at most N × attempts tries per window."""

    def __init__(self, attempts: int, window: int, max_ips: int = 100_000):
        self.attempts = attempts
        self.window = window
        self.max_ips = max_ips
        self._fails: dict[str, deque[int]] = {}

    def _recent(self, ip: str, now: int) -> deque[int] | None:
        q = self._fails.get(ip)
        if q is not None:
            while q and q[0] <= now - self.window:
                q.popleft()
            if not q:
                del self._fails[ip]
                return None
        return q

    def retry_after(self, ip: str, now: int) -> int:
        """Seconds until ``ip`` may try again (0: now)."""
        q = self._recent(ip, now)
        if q is None or len(q) < self.attempts:
            return 0
        return max(1, q[0] + self.window - now)

    def failed(self, ip: str, now: int) -> None:
        if len(self._fails) >= self.max_ips and ip not in self._fails:
            self._fails.clear()  # bounded memory under an address-spraying attack
        self._fails.setdefault(ip, deque()).append(now)

    def succeeded(self, ip: str) -> None:
        self._fails.pop(ip, None)



"""The console over HTTP against a live gateway: sign-in, sessions, CSRF, headers, the holder's
pages showing the ledger's numbers, account isolation, self-service keys, the operator's
actions through the billing functions, and bad input as error pages (never a 500)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.billing.conftest import pg_url  # noqa: F401  (fixture)
from tests.conftest import Gateway, make_gateway
from tests.console.conftest import ADMIN, CONSOLE, Console, chat, fresh_ip, usage, wait_calls
from tests.fakes.upstream import FakeUpstream


def data_values(page: str, chart_id: str) -> list[tuple[str, str, float]]:
    section = page.split(f'id="{chart_id}"', 1)[1].split("</section>", 1)[0]
    return [(lab, ser, float(v)) for lab, ser, v in
            re.findall(r'data-label="([^"]+)" data-series="([^"]+)" data-value="([^"]+)"', section)]


def test_signin_page_headers_and_no_inline_script(cgw: Gateway) -> None:
    c = Console(cgw)
    r = c.get("/console/signin")
    assert r.status_code == 200
    h = r.headers
    assert h["content-security-policy"].startswith("default-src 'self'; script-src 'self'; style-src 'self'")
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert re.findall(r"<script(?![^>]*\bsrc=)", r.text) == []  # every script is a file
    assert "style=" not in r.text
    pre = r.cookies.get("stepplan_console_csrf")
    assert pre
    cookie = h["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain HTTP here
    js = c.get("/console/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert c.get("/console/static/..%2Fweb.py").status_code == 404


def test_wrong_key_and_csrf_less_post_are_refused(cgw: Gateway) -> None:
    key = cgw.new_key("c-wrong")
    c = Console(cgw)
    r = c.signin("sk-step-not-a-real-key")
    assert r.status_code == 401 and "not valid" in r.text
    c.page("/console/signin")
    r = c.post("/console/signin", {"api_key": key}, csrf=False)
    assert r.status_code == 403 and "CSRF" in r.text
    assert "stepplan_console" not in r.cookies
    r = c.signin(key)
    assert r.status_code == 303 and r.headers["location"] == "/console/overview"
    c.page("/console/keys")
    r = c.post("/console/keys", {"name": "x"}, csrf=False)  # signed in, still no token: refused
    assert r.status_code == 403
    r = c.post("/console/keys", {"name": "x", "csrf": "0" * 64}, csrf=False)
    assert r.status_code == 403
    assert key not in cgw.log_text() and ADMIN not in cgw.log_text()


def test_signin_attempts_are_limited_per_address(cgw: Gateway) -> None:
    key = cgw.new_key("c-limit")
    ip = fresh_ip()
    c = Console(cgw, ip)
    for _ in range(5):
        assert c.signin("sk-step-wrong").status_code == 401
    r = c.signin(key)  # even the right key waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert Console(cgw).signin(key).status_code == 303  # another address is not affected
    deadline = time.monotonic() + 10
    while f"failed key holder sign-in from {ip}" not in cgw.log_text():  # the address, never the key
        assert time.monotonic() < deadline, cgw.log_text()[-2000:]
        time.sleep(0.1)
    assert "sk-step-wrong" not in cgw.log_text() and key not in cgw.log_text()


def test_session_signs_out_and_ends_with_its_key(cgw: Gateway) -> None:
    key = cgw.new_key("c-session")
    c = Console(cgw)
    assert c.signin(key).status_code == 303
    old = c.http.cookies.get("stepplan_console")
    assert old
    c.page("/console/overview")
    assert c.post("/console/signout", {}).status_code == 303
    replay = httpx.get(f"{cgw.url}/console/overview", cookies={"stepplan_console": old})
    assert replay.status_code == 303 and replay.headers["location"] == "/console/signin"
    forged = httpx.get(f"{cgw.url}/console/overview", cookies={"stepplan_console": old[:-4] + "abcd"})
    assert forged.status_code == 303
    # A session opened with a key ends when that key is revoked.
    c2 = Console(cgw)
    assert c2.signin(key).status_code == 303
    c2.page("/console/overview")
    cgw.cli("keys", "revoke", str(_key_id(cgw, "c-session", key)))
    r = c2.get("/console/overview")
    assert r.status_code == 303


def _key_id(gw: Gateway, account: str, key: str) -> int:
    rows = httpx.get(f"{gw.url}/admin/v1/keys", params={"account": account},
                     headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    return next(r["id"] for r in rows if key.startswith(r["prefix"]))


def test_holder_pages_show_the_ledger_and_only_their_account(cgw: Gateway) -> None:
    holder_pages_show_the_ledger_and_only_their_account(cgw)


@pytest.mark.postgres
def test_holder_and_operator_pages_on_postgresql(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream,
                                                 request: pytest.FixtureRequest) -> None:
    """The same pages over a PostgreSQL database (its SQL: day arithmetic, the covering index, paging)."""
    db_url = request.getfixturevalue("pg_url")
    gw = make_gateway(tmp_path_factory.mktemp("console-pg"), fake, db_url=db_url, extra=CONSOLE,
                      env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    gw.start()
    try:
        holder_pages_show_the_ledger_and_only_their_account(gw)
        op = Console(gw)
        assert op.signin_admin().status_code == 303
        assert "c-alice" in op.page("/console/admin/accounts", params={"q": "c-alice"})
        account = op.page("/console/admin/accounts/c-alice")
        assert "Flash Max" in account
        ledger = op.page("/console/admin/ledger", params={"account": "c-alice"})
        assert ledger.count("data-trace=") == 3
        assert "ok" in op.page("/console/admin/health").lower()
    finally:
        gw.stop()


def holder_pages_show_the_ledger_and_only_their_account(cgw: Gateway) -> None:
    key_a, key_b = cgw.new_key("c-alice"), cgw.new_key("c-bob")
    traces_a = [chat(cgw, key_a) for _ in range(3)]
    trace_b = chat(cgw, key_b)
    view = wait_calls(cgw, key_a, 3)
    wait_calls(cgw, key_b, 1)
    c = Console(cgw)
    assert c.signin(key_a).status_code == 303
    page = c.page("/console/overview")
    left = view["plan_credit_rate_limit"]["credit_left_micro"]
    assert f'data-residual-micro="{view["plan_credit_rate_limit"]["credit_buckets"][0]["credit_residual_micro"]}"' \
        in page
    assert "Flash Max" in page and "c-alice" in page
    whole, _frac = divmod(int(left), 1_000_000)
    assert f"{whole:,}" in page.split('id="credit-left"', 1)[1][:60]
    calls = c.page("/console/calls")
    assert all(t in calls for t in traces_a) and trace_b not in calls
    # A trace id of another account finds nothing; its account's data never shows.
    assert f'data-trace="{trace_b}"' not in c.page("/console/calls", params={"trace": trace_b})
    assert f'data-trace="{traces_a[0]}"' in c.page("/console/calls", params={"trace": traces_a[0]})
    used = c.page("/console/usage", params={"days": "7"})
    credit = data_values(used, "credit-chart")
    total = sum(int(r["credit_consumed_micro"]) for r in usage(cgw, key_a)["usage"]["records"])
    assert abs(sum(v for _, _, v in credit) - total / 1e6) < 1e-6 * len(credit) + 1e-9
    assert {s for _, s, _ in credit} == {"step-3.5-flash"}
    tokens = data_values(used, "token-chart")
    assert sum(v for _, s, v in tokens if s == "Input") == 3 * 11
    assert "c-bob" not in used
    # Bob's key id is not Alice's to revoke, and looks just like a missing one.
    c.page("/console/keys")
    bob_id = _key_id(cgw, "c-bob", key_b)
    r = c.post(f"/console/keys/{bob_id}/revoke", {})
    assert r.status_code == 404
    assert chat(cgw, key_b)


def test_self_service_key_create_and_revoke(cgw: Gateway) -> None:
    key = cgw.new_key("c-self")
    c = Console(cgw)
    c.signin(key)
    c.page("/console/keys")
    r = c.post("/console/keys", {"name": "laptop"})
    assert r.status_code == 200
    new = re.search(r'id="new-key">(sk-step-[^<]+)<', r.text)
    assert new
    new_key = new.group(1)
    assert chat(cgw, new_key)
    new_id = _key_id(cgw, "c-self", new_key)
    c.csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    assert c.post(f"/console/keys/{new_id}/revoke", {}).status_code == 303
    r = httpx.post(f"{cgw.openai_base}/chat/completions", headers={"authorization": f"Bearer {new_key}"},
                   json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 401
    assert new_key not in c.page("/console/keys")  # shown once


def test_operator_subscribes_previews_and_tops_up(cgw: Gateway) -> None:
    c = Console(cgw)
    assert c.signin_admin("wrong").status_code == 401
    r = c.signin_admin()
    assert r.status_code == 303 and r.headers["location"] == "/console/admin/accounts"
    c.page("/console/admin/accounts")
    r = c.post("/console/admin/accounts", {"name": "c-new co"})
    assert r.status_code == 303 and r.headers["location"] == "/console/admin/accounts/c-new%20co"
    page = c.page("/console/admin/accounts/c-new%20co")
    assert "No active subscription" in page
    r = c.post("/console/admin/accounts/c-new%20co/subscription", {"plan": "flash-mini", "period": "monthly"})
    assert r.status_code == 200 and 'id="amount-due">¥49.00' in r.text
    assert "No active subscription" in c.page("/console/admin/accounts/c-new%20co")  # a preview writes nothing
    r = c.post("/console/admin/accounts/c-new%20co/subscription",
               {"plan": "flash-mini", "period": "monthly", "confirm": "1"})
    assert r.status_code == 303
    page = c.page("/console/admin/accounts/c-new%20co")
    assert "Flash Mini" in page and 'data-kind="subscription"' in page
    # An upgrade's preview shows the pro-rated amount (the old term's unused value credited).
    r = c.post("/console/admin/accounts/c-new%20co/subscription", {"plan": "flash-plus"})
    assert "upgraded" in r.text and "¥" in r.text.split('id="amount-due">', 1)[1][:12]
    r = c.post("/console/admin/accounts/c-new%20co/topups", {"pack": "small"})
    assert r.status_code == 200 and 'id="preview-credits">400' in r.text
    assert 'data-kind="topup"' not in c.page("/console/admin/accounts/c-new%20co")
    assert c.post("/console/admin/accounts/c-new%20co/topups", {"pack": "small", "confirm": "1"}).status_code == 303
    page = c.page("/console/admin/accounts/c-new%20co")
    assert 'data-kind="topup"' in page
    admin_view = httpx.get(f"{cgw.url}/admin/v1/accounts/c-new%20co",
                           headers={"authorization": f"Bearer {ADMIN}"}).json()
    kinds = [b["kind"] for b in admin_view["plan_credit_rate_limit"]["credit_buckets"]]
    assert kinds.count("topup") == 1 and admin_view["subscription"]["plan"] == "flash-mini"
    # Keys across accounts: create one, then revoke it.
    c.page("/console/admin/keys")
    r = c.post("/console/admin/keys/new", {"account": "c-new co", "name": "ops"})
    key = re.search(r'id="new-key">(sk-step-[^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    trace = chat(cgw, key)
    keys_page = c.page("/console/admin/keys", params={"account": "c-new co"})
    kid = _key_id(cgw, "c-new co", key)
    assert f'data-key-id="{kid}"' in keys_page
    # The ledger: the call is found by its trace id; the check passes.
    wait_calls(cgw, key, 1)
    assert f'data-trace="{trace}"' in c.page("/console/admin/ledger", params={"trace": trace})
    found = c.page("/console/admin/ledger", params={"account": "c-new co", "model": "step-3.5-flash"})
    assert f'data-trace="{trace}"' in found
    assert 'data-ok="true"' in c.page("/console/admin/ledger/check")
    assert c.post(f"/console/admin/keys/{kid}/revoke", {"next": "/console/admin/keys"}).status_code == 303
    health = c.page("/console/admin/health")
    assert 'data-upstream="fake"' in health and 'data-check="database" data-ok="true"' in health
    # An operator session is not a key holder's, and the reverse.
    assert c.get("/console/overview").status_code == 303


def test_bad_input_gets_error_pages_never_a_500(cgw: Gateway) -> None:
    key = cgw.new_key("c-bad")
    c = Console(cgw)
    c.signin(key)
    cases = [("/console/usage", {"days": "abc"}, 400), ("/console/usage", {"from": "2026-13-01"}, 400),
             ("/console/usage", {"from": "2026-02-01", "to": "2026-01-01"}, 400),
             ("/console/calls", {"before": "x"}, 400), ("/console/calls", {"from": "yesterday"}, 400),
             ("/console/keys/abc/revoke", None, 405)]
    for path, params, status in cases:
        r = c.get(path, params=params)
        assert r.status_code == status, (path, params, r.status_code, r.text[:300])
    r = c.http.post("/console/keys", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    c.page("/console/keys")
    assert c.post("/console/keys/abc/revoke", {}).status_code == 400
    admin = Console(cgw)
    admin.signin_admin()
    admin.page("/console/admin/accounts")
    assert admin.get("/console/admin/accounts/nobody").status_code == 404
    assert admin.post("/console/admin/accounts/c-bad/subscription", {"plan": "nope"}).status_code == 400
    assert admin.post("/console/admin/accounts/c-bad/topups", {"pack": "nope"}).status_code == 400
    assert admin.post("/console/admin/accounts", {"name": ""}).status_code == 400
    assert admin.post("/console/admin/accounts", {"name": "c-bad"}).status_code == 409
    assert admin.get("/console/admin/ledger", params={"account": "nobody"}).status_code == 404


def test_language_switch_and_secure_cookie_behind_https_proxy(cgw: Gateway) -> None:
    c = Console(cgw)
    assert "使用 API Key 登录" in c.get("/console/signin", headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"}).text
    assert "Sign in with your API key" in c.get("/console/signin", headers={"accept-language": "en-US,en"}).text
    r = c.get("/console/signin", params={"lang": "zh"})
    assert "使用 API Key 登录" in r.text and r.cookies.get("stepplan_lang") == "zh"
    assert "使用 API Key 登录" in c.get("/console/signin", headers={"accept-language": "en"}).text  # remembered
    r = c.get("/console/signin", headers={"x-forwarded-proto": "https"})
    assert "secure" in r.headers["set-cookie"].lower()


def test_sessions_expire(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> None:
    """A session ends ``session_hours`` after sign-in, on the server (not only the cookie's max-age)."""
    gw = make_gateway(tmp_path_factory.mktemp("console-expiry"), fake,
                      extra="[console]\nsession_hours = 0.0006\n")  # 2 s
    gw.start()
    try:
        key = gw.new_key("c-expiry")
        c = Console(gw)
        r = c.signin(key)
        assert r.status_code == 303
        cookie = c.http.cookies.get("stepplan_console")
        assert "max-age=2" in r.headers["set-cookie"].lower()
        ok = httpx.get(f"{gw.url}/console/overview", cookies={"stepplan_console": cookie})
        assert ok.status_code == 200
        deadline = time.monotonic() + 20
        while True:  # the same cookie, sent by hand, until the server refuses it
            r = httpx.get(f"{gw.url}/console/overview", cookies={"stepplan_console": cookie})
            if r.status_code == 303:
                assert r.headers["location"] == "/console/signin"
                break
            assert time.monotonic() < deadline, "the session did not expire"
            time.sleep(0.2)
    finally:
        gw.stop()

"""The console and key governance as one product: operator sign-in with the admin API's tokens
(scoped, revocable), an audit record for every console change, per-key settings shown and set
from the console (and enforced on the next API call), rotation with a grace, revocations
announced on Redis, and account names with "/"."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.billing.conftest import REDIS_URL, redis_available
from tests.conftest import Gateway, make_gateway
from tests.console.conftest import ADMIN, CONSOLE, Console, chat
from tests.fakes.upstream import FakeUpstream

NEW_KEY = re.compile(r'id="new-key">(sk-step-[^<]+)<')


def admin_token(gw: Gateway, name: str, scope: str) -> dict[str, Any]:
    made = json.loads(gw.cli("admin-token", "create", "--name", name, "--scope", scope, "--json").stdout)
    assert isinstance(made, dict) and made["token"]
    return made


def audit(gw: Gateway) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/v1/audit", params={"limit": "100000"},
                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def key_view(gw: Gateway, account: str, key: str) -> dict[str, Any]:
    rows = httpx.get(f"{gw.url}/admin/v1/keys", params={"account": account},
                     headers={"authorization": f"Bearer {ADMIN}"}, timeout=30).json()["data"]
    return next(r for r in rows if key.startswith(r["prefix"]))


def api_call(gw: Gateway, key: str, model: str = "step-3.5-flash") -> httpx.Response:
    return httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})


def account_exists(gw: Gateway, name: str) -> bool:
    r = httpx.get(f"{gw.url}/admin/v1/accounts/{name}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    return r.status_code == 200


def test_db_admin_tokens_sign_in_with_their_scope_and_end_when_revoked(cgw: Gateway) -> None:
    reader, writer = admin_token(cgw, "c-dash", "read"), admin_token(cgw, "c-ops", "write")

    r = Console(cgw)
    assert r.signin_admin(reader["token"]).status_code == 303
    page = r.page("/console/admin/accounts")
    assert "c-dash" in page and "read-only" in page
    assert 'id="create-account"' not in page  # forms hidden
    refused = r.post("/console/admin/accounts", {"name": "c-by-reader"})
    assert refused.status_code == 403 and "read scope" in refused.text
    assert not account_exists(cgw, "c-by-reader")
    key = cgw.new_key("c-scope")
    kid = key_view(cgw, "c-scope", key)["id"]
    detail = r.page(f"/console/admin/keys/{kid}")
    assert 'id="limits-form"' not in detail and 'id="rotate"' not in detail and f'id="revoke-{kid}"' not in detail
    assert r.post(f"/console/admin/keys/{kid}/revoke", {}).status_code == 403
    assert api_call(cgw, key).status_code == 200

    w = Console(cgw)
    assert w.signin_admin(writer["token"]).status_code == 303
    assert 'id="create-account"' in w.page("/console/admin/accounts")
    assert w.post("/console/admin/accounts", {"name": "c-by-writer"}).status_code == 303
    assert ("console:c-ops", "account.create", "account:c-by-writer") in {
        (a["actor"], a["action"], a["target"]) for a in audit(cgw)}

    # Revoking the read token ends its console session at once; the write token's session lives on.
    cgw.cli("admin-token", "revoke", str(reader["id"]))
    gone = r.get("/console/admin/accounts")
    assert gone.status_code == 303 and gone.headers["location"] == "/console/admin/signin"
    assert r.signin_admin(reader["token"]).status_code == 401
    assert w.get("/console/admin/accounts").status_code == 200
    cgw.cli("admin-token", "revoke", str(writer["id"]))
    assert w.get("/console/admin/accounts").status_code == 303


def test_every_console_change_is_audited(cgw: Gateway) -> None:
    since = len(audit(cgw))
    c = Console(cgw)
    c.signin_admin()
    c.page("/console/admin/accounts")
    assert c.post("/console/admin/accounts", {"name": "c-audited"}).status_code == 303
    base = "/console/admin/accounts/c-audited"
    assert c.post(f"{base}/subscription", {"plan": "flash-mini", "period": "monthly", "auto_renew": "on"}
                  ).status_code == 200  # a preview: no record
    assert c.post(f"{base}/subscription", {"plan": "flash-mini", "period": "monthly", "auto_renew": "on",
                                           "confirm": "1"}).status_code == 303
    assert c.post(f"{base}/topups", {"pack": "small", "confirm": "1"}).status_code == 303
    page = c.page(base)
    assert 'id="stop-renewal"' in page
    assert c.post(f"{base}/subscription/cancel", {}).status_code == 303
    page = c.page(base)
    assert 'id="stop-renewal"' not in page and 'id="auto-renew">—' in page
    made = c.post(f"{base}/keys", {"name": "ops"})
    op_key = NEW_KEY.search(made.text).group(1)  # type: ignore[union-attr]
    kid = key_view(cgw, "c-audited", op_key)["id"]
    c.page(f"/console/admin/keys/{kid}")
    assert c.post(f"/console/admin/keys/{kid}/limits", {"rpm": "30"}).status_code == 303
    assert c.post(f"/console/admin/keys/{kid}/revoke", {"next": base}).status_code == 303

    # A key holder's self-service, recorded under the key the holder signed in with.
    holder_key = cgw.new_key("c-audited-holder")
    prefix = key_view(cgw, "c-audited-holder", holder_key)["prefix"]
    h = Console(cgw)
    h.signin(holder_key)
    h.page("/console/keys")
    made = h.post("/console/keys", {"name": "laptop"})
    laptop = NEW_KEY.search(made.text).group(1)  # type: ignore[union-attr]
    laptop_id = key_view(cgw, "c-audited-holder", laptop)["id"]
    h.page("/console/keys")
    assert h.post(f"/console/keys/{laptop_id}/revoke", {}).status_code == 303

    records = [a for a in audit(cgw)[since:] if a["actor"].startswith("console:")]  # the CLI's own are left out
    got = [(a["actor"], a["action"], a["target"]) for a in records]
    assert got == [
        ("console:env", "account.create", "account:c-audited"),
        ("console:env", "subscription.set", "account:c-audited"),
        ("console:env", "topup.create", "account:c-audited"),
        ("console:env", "subscription.cancel", "account:c-audited"),
        ("console:env", "key.create", f"key:{kid}"),
        ("console:env", "key.update", f"key:{kid}"),
        ("console:env", "key.revoke", f"key:{kid}"),
        (f"console:key:{prefix}", "key.create", f"key:{laptop_id}"),
        (f"console:key:{prefix}", "key.revoke", f"key:{laptop_id}"),
    ], got
    assert records[5]["before"]["rpm"] is None and records[5]["after"]["rpm"] == 30
    assert records[3]["before"]["auto_renew"] is True and records[3]["after"]["auto_renew"] is False
    assert op_key not in json.dumps(records) and laptop not in json.dumps(records)  # no secret in the log


def test_limits_shown_and_set_from_the_console_hold_on_the_api(cgw: Gateway) -> None:
    key = cgw.new_key("c-limits")
    kid = key_view(cgw, "c-limits", key)["id"]
    c = Console(cgw)
    c.signin_admin()
    page = c.page(f"/console/admin/keys/{kid}")
    assert 'data-setting="models">—' in page
    # Validation messages are key_settings' own, on the form's page; nothing changes.
    bad = c.post(f"/console/admin/keys/{kid}/limits", {"rpm": "many"})
    assert bad.status_code == 400 and "rpm must be a positive whole number" in bad.text
    bad = c.post(f"/console/admin/keys/{kid}/limits", {"models": "no-such-model"})
    assert bad.status_code == 400 and "is not a model of this gateway" in bad.text
    assert c.post(f"/console/admin/keys/{kid}/limits", {}).status_code == 400
    assert key_view(cgw, "c-limits", key)["models"] is None

    r = c.post(f"/console/admin/keys/{kid}/limits", {
        "models": "step-router-v1", "credit_limit_daily": "5000.5", "concurrency": "3", "expires": "2099-01-01",
        "labels": "team=search\nowner=ana"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/admin/keys/{kid}?done=updated"
    view = key_view(cgw, "c-limits", key)
    assert view["models"] == ["step-router-v1"] and view["credit_limit_daily"] == "5000.5"
    assert view["concurrency"] == 3 and view["labels"] == {"team": "search", "owner": "ana"}
    refused = api_call(cgw, key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied", refused.text

    page = c.page(f"/console/admin/keys/{kid}")
    assert 'data-setting="models">step-router-v1<' in page and 'data-setting="credit_limit_daily">5000.5<' in page
    assert "owner=ana, team=search" in page and "2099-01-01" in page
    listing = c.page("/console/admin/keys", params={"account": "c-limits"})
    cell = listing.split(f'data-key-limits="{kid}"', 1)[1].split("</td>", 1)[0]
    assert "step-router-v1" in cell and "5000.5" in cell and "team=search" in cell
    # The key holder sees the same limits, read-only.
    h = Console(cgw)
    h.signin(key)
    mine = h.page("/console/keys")
    cell = mine.split(f'data-key-limits="{kid}"', 1)[1].split("</td>", 1)[0]
    assert "step-router-v1" in cell and "5000.5" in cell
    assert "/limits" not in mine and "/rotate" not in mine

    # Clearing the allowlist lets the call through again.
    assert c.post(f"/console/admin/keys/{kid}/limits", {"clear_models": "1"}).status_code == 303
    assert key_view(cgw, "c-limits", key)["models"] is None
    assert api_call(cgw, key).status_code == 200


def test_rotation_from_the_console(cgw: Gateway) -> None:
    old = cgw.new_key("c-rotate")
    old_id = key_view(cgw, "c-rotate", old)["id"]
    c = Console(cgw)
    c.signin_admin()
    c.page(f"/console/admin/keys/{old_id}")
    assert c.post(f"/console/admin/keys/{old_id}/limits", {"rpm": "100"}).status_code == 303
    assert c.post(f"/console/admin/keys/{old_id}/rotate", {"grace": "soon"}).status_code == 400
    r = c.post(f"/console/admin/keys/{old_id}/rotate", {"grace": "1h"})
    assert r.status_code == 200 and 'id="rotated"' in r.text and 'id="old-until"' in r.text
    new = NEW_KEY.search(r.text).group(1)  # type: ignore[union-attr]
    assert chat(cgw, new) and chat(cgw, old)  # the old key works during its grace
    new_view, old_view = key_view(cgw, "c-rotate", new), key_view(cgw, "c-rotate", old)
    assert new_view["rpm"] == 100 and old_view["status"] == "rotated" and old_view["replaced_by"] == new_view["id"]
    page = c.page(f"/console/admin/keys/{old_id}")
    assert 'data-status="rotated"' in page and f'id="replaced-by">#{new_view["id"]}' in page
    assert 'id="rotate"' not in page  # rotate the new key, not this one
    assert new not in c.page(f"/console/admin/keys/{new_view['id']}")  # shown once
    # A grace of 0s revokes the old key at once.
    r = c.post(f"/console/admin/keys/{new_view['id']}/rotate", {"grace": "0s"})
    newest = NEW_KEY.search(r.text).group(1)  # type: ignore[union-attr]
    assert 'id="old-until"' not in r.text
    assert api_call(cgw, new).status_code == 401 and chat(cgw, newest)
    actions = [(a["actor"], a["action"]) for a in audit(cgw) if a["target"] in (f"key:{old_id}",
                                                                               f"key:{new_view['id']}")]
    assert actions.count(("console:env", "key.rotate")) == 2


def test_account_names_with_a_slash_open(cgw: Gateway) -> None:
    c = Console(cgw)
    c.signin_admin()
    c.page("/console/admin/accounts")
    r = c.post("/console/admin/accounts", {"name": "c-team/a b"})
    assert r.status_code == 303 and r.headers["location"] == "/console/admin/accounts/c-team%2Fa%20b"
    listing = c.page("/console/admin/accounts", params={"q": "c-team/"})
    assert 'href="/console/admin/accounts/c-team%2Fa%20b"' in listing
    page = c.page("/console/admin/accounts/c-team%2Fa%20b")
    assert "c-team/a b" in page
    assert c.post("/console/admin/accounts/c-team%2Fa%20b/subscription",
                  {"plan": "flash-mini", "period": "monthly", "confirm": "1"}).status_code == 303
    assert "Flash Mini" in c.page("/console/admin/accounts/c-team%2Fa%20b")


def test_operator_sign_in_with_database_tokens_only(tmp_path: Path, fake: FakeUpstream) -> None:
    """Without STEPPLAN_ADMIN_TOKEN, operator sign-in is off until an admin token is created, as the
    admin API is; then that token signs in."""
    gw = make_gateway(tmp_path, fake, extra=CONSOLE)
    gw.start()
    try:
        c = Console(gw)
        assert c.get("/console/admin/signin").status_code == 404
        made = admin_token(gw, "c-only", "write")
        assert c.signin_admin(made["token"]).status_code == 303
        assert "Operator: c-only" in c.page("/console/admin/accounts")
        assert c.post("/console/admin/accounts", {"name": "c-only-co"}).status_code == 303
    finally:
        gw.stop()


@pytest.mark.redis
def test_console_revocation_is_announced_on_redis(tmp_path: Path, fake: FakeUpstream) -> None:
    """A key revoked in the console is published on the revocation channel (other processes drop it)."""
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    from stepplan.revocation import CHANNEL

    gw = make_gateway(tmp_path, fake, extra=CONSOLE,
                      env={"STEPPLAN_ADMIN_TOKEN": ADMIN, "STEPPLAN_REDIS_URL": REDIS_URL})
    gw.start()
    sub = redis.Redis.from_url(REDIS_URL).pubsub()
    try:
        key = gw.new_key("c-redis")
        kid = key_view(gw, "c-redis", key)["id"]
        sub.subscribe(CHANNEL)
        assert sub.get_message(timeout=5) is not None  # the subscription's confirmation
        c = Console(gw)
        c.signin_admin()
        c.page("/console/admin/keys")
        assert c.post(f"/console/admin/keys/{kid}/revoke", {}).status_code == 303
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = sub.get_message(timeout=0.5)
        assert got is not None and got["type"] == "message", "no announcement on the revocation channel"
        assert api_call(gw, key).status_code == 401
    finally:
        sub.close()
        gw.stop()

"""The ``stepplan keys`` CLI shapes scripts rely on, rotation with a grace period on the injected
clock, admin tokens with scopes, and the audit log of every change (CLI and admin API)."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import httpx

from tests.billing.conftest import ADMIN, Admin, cli_at
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream
from tests.keys.conftest import Keys, call, code, message


def _json(gw: Gateway, *args: str) -> object:
    return json.loads(gw.cli(*args, "--json").stdout)


def test_keys_create_update_list_json(kgw: Gateway, kadmin: Admin) -> None:
    account, _ = kadmin.account()
    made = _json(kgw, "keys", "create", "--account", account, "--name", "ci-agent", "--expires", "2099-01-01",
                 "--models", "step-3.5-flash,step-router-v1", "--rpm", "60", "--concurrency", "4",
                 "--credit-limit-daily", "125.5", "--credit-limit-monthly", "300", "--ip", "10.0.0.0/8",
                 "--ip", "127.0.0.1", "--label", "team=ci", "--label", "owner=ana")
    assert isinstance(made, dict) and made["key"].startswith("sk-step-")
    assert made["models"] == ["step-3.5-flash", "step-router-v1"] and made["rpm"] == 60
    assert made["concurrency"] == 4 and made["credit_limit_daily"] == "125.5" and made["credit_limit_monthly"] == "300"
    assert made["ip"] == ["10.0.0.0/8", "127.0.0.1/32"] and made["labels"] == {"team": "ci", "owner": "ana"}
    assert made["expires_at"] == 4070908800 and made["status"] == "active"
    assert call(kgw, made["key"]).status_code == 200  # 127.0.0.1 is allowed

    key_id = str(made["id"])
    updated = _json(kgw, "keys", "update", key_id, "--clear-rpm", "--clear-ip", "--concurrency", "1",
                    "--label", "team=platform")
    assert isinstance(updated, dict)
    assert updated["rpm"] is None and updated["ip"] is None and updated["concurrency"] == 1
    assert updated["labels"] == {"team": "platform", "owner": "ana"}
    listed = _json(kgw, "keys", "list", "--account", account)
    assert isinstance(listed, list) and [k["id"] for k in listed][-1] == made["id"]  # after Admin.account's key
    mine = listed[-1]
    assert "key" not in mine and "hash" not in mine and mine["credit_limit_daily"] == "125.5"
    assert mine["last_used_at"] is None or mine["last_used_at"] > 0
    text = kgw.cli("keys", "list", "--account", account).stdout
    assert f"{key_id}\t{account}\t" in text and "credit-limit-daily=125.5" in text and "last-used=" in text

    # bad input: one clear line, exit status 1, nothing changed
    for args, words in ((["--rpm", "0"], "rpm must be a positive"), (["--ip", "10.0.0.300/8"], "not an IP"),
                        (["--models", "gpt-5"], "not a model"), (["--expires", "2001-01-01"], "in the past"),
                        (["--credit-limit-daily", "1.0000001"], "6 decimal places"),
                        (["--label", "novalue"], "key=value"), (["--rpm", "5", "--clear-rpm"], "contradict")):
        out = kgw.cli("keys", "update", key_id, *args, check=False)
        assert out.returncode == 1 and words in out.stderr, (args, out.stderr)
    assert kgw.cli("keys", "update", "999999", "--rpm", "5", check=False).stderr.startswith("error: no active key")


def test_rotation_with_a_grace_period(kgw: Gateway, keys: Keys) -> None:
    key_id, old, _ = keys.make(models=["step-3.5-flash"], rpm=50)
    out = _json(kgw, "keys", "rotate", str(key_id), "--grace", "1h")
    assert isinstance(out, dict)
    new = out["key"]
    assert new != old and out["replaces"] == key_id and out["models"] == ["step-3.5-flash"] and out["rpm"] == 50
    assert call(kgw, old).status_code == 200 and call(kgw, new).status_code == 200  # both, during the grace
    again = kgw.cli("keys", "rotate", str(key_id), check=False)
    assert again.returncode == 1 and "already rotated" in again.stderr

    # rotated "two hours ago" with a one-hour grace: the old key is refused, the new one works
    key_id2, old2, _ = keys.make()
    text = cli_at(kgw, -7200, "keys", "rotate", str(key_id2), "--grace", "1h").stdout
    assert f"replaces key {key_id2}, which keeps working until" in text
    new2 = text.strip().splitlines()[-1]
    for proto in ("chat", "messages"):
        r = call(kgw, old2, proto)
        assert r.status_code == 401 and code(r, proto) == "invalid_api_key"
        assert "rotated and its grace period ended" in message(r)
        assert call(kgw, new2, proto).status_code == 200

    # --grace 0s: the old key stops at once (the admin API's rotate drops every process's cache)
    key_id3, old3, _ = keys.make()
    assert call(kgw, old3).status_code == 200
    r = keys.admin.http.post(f"/admin/v1/keys/{key_id3}/rotate", json={"grace": "0s"})
    assert r.status_code == 201 and r.json()["old_key_valid_until"] is None
    assert call(kgw, old3).status_code == 401 and call(kgw, r.json()["key"]).status_code == 200


def test_admin_api_key_settings(kgw: Gateway, keys: Keys) -> None:
    http = keys.admin.http
    account, _ = keys.admin.account()
    r = http.post(f"/admin/v1/accounts/{account}/keys", json={"name": "x", "rpm": "fast"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rpm"
    r = http.post(f"/admin/v1/accounts/{account}/keys", json={"name": "x", "colour": "red"})
    assert r.status_code == 400 and "unknown field 'colour'" in r.json()["error"]["message"]
    key_id, _, _ = keys.make(account, rpm=5, labels={"a": "1"})
    r = keys.patch(key_id, rpm=None, concurrency=2, labels={"b": "2"})
    assert r.status_code == 200 and r.json()["rpm"] is None and r.json()["concurrency"] == 2
    assert r.json()["labels"] == {"a": "1", "b": "2"}
    listed = http.get("/admin/v1/keys", params={"account": account}).json()["data"]
    assert [k["concurrency"] for k in listed] == [None, 2]  # the account's first key has no limits
    assert keys.patch(key_id).status_code == 400  # nothing to change
    assert http.delete(f"/admin/v1/keys/{key_id}").status_code == 200
    assert keys.patch(key_id, rpm=3).status_code == 404


def test_admin_tokens_and_scopes(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake)  # no STEPPLAN_ADMIN_TOKEN
    gw.start()
    try:
        assert httpx.get(f"{gw.url}/admin/v1/accounts").status_code == 404  # no token of any kind: off
        made = _json(gw, "admin-token", "create", "--name", "dash", "--scope", "read")
        assert isinstance(made, dict)
        read = made["token"]
        write = json.loads(gw.cli("admin-token", "create", "--name", "ops", "--scope", "write", "--json").stdout)
        listed = _json(gw, "admin-token", "list")
        assert isinstance(listed, list) and [t["scope"] for t in listed] == ["read", "write"]
        assert read not in json.dumps(listed) and "hash" not in listed[0]
        db = (tmp_path / "stepplan.db").read_bytes()
        assert read.encode() not in db and write["token"].encode() not in db  # only hashes are stored

        def get(token: str) -> httpx.Response:
            return httpx.get(f"{gw.url}/admin/v1/accounts", headers={"authorization": f"Bearer {token}"})

        def post(token: str, name: str) -> httpx.Response:
            return httpx.post(f"{gw.url}/admin/v1/accounts", json={"name": name},
                              headers={"authorization": f"Bearer {token}"})

        assert get(read).status_code == 200 and get("wrong").status_code == 401
        r = post(read, "by-reader")
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert "read scope" in r.json()["error"]["message"]
        assert post(write["token"], "by-writer").status_code == 201
        assert httpx.get(f"{gw.url}/admin/v1/audit", headers={"x-admin-token": read}).status_code == 200
        gw.cli("admin-token", "revoke", str(made["id"]))
        assert get(read).status_code == 401  # revoked: refused (the API stays on for the others)
        assert get(write["token"]).status_code == 200
        assert gw.cli("admin-token", "revoke", str(made["id"]), check=False).returncode == 1
        audit = httpx.get(f"{gw.url}/admin/v1/audit", headers={"x-admin-token": write["token"]}).json()["data"]
        assert ("admin:ops", "account.create", "account:by-writer") in {(a["actor"], a["action"], a["target"])
                                                                       for a in audit}
        assert not any(a["target"] == "account:by-reader" for a in audit)
    finally:
        gw.stop()


def test_every_change_is_audited(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake, env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    gw.start()
    try:
        admin = Admin(gw)
        me = f"cli:{getpass.getuser()}"
        gw.cli("accounts", "create", "team-a")
        gw.cli("subscribe", "team-a", "--plan", "flash-max")
        gw.cli("topup", "team-a", "--pack", "small")
        made = json.loads(gw.cli("keys", "create", "--account", "team-a", "--rpm", "5", "--json").stdout)
        gw.cli("keys", "update", str(made["id"]), "--credit-limit-daily", "20")
        rotated = json.loads(gw.cli("keys", "rotate", str(made["id"]), "--grace", "1h", "--json").stdout)
        gw.cli("keys", "revoke", str(rotated["id"]))
        tok = json.loads(gw.cli("admin-token", "create", "--name", "n", "--scope", "read", "--json").stdout)
        gw.cli("admin-token", "revoke", str(tok["id"]))
        admin.account("team-b")  # admin API: account, subscription, key
        admin.topup("team-b", "small")
        kid = admin.http.get("/admin/v1/keys", params={"account": "team-b"}).json()["data"][0]["id"]
        assert admin.http.patch(f"/admin/v1/keys/{kid}", json={"models": ["step-3.5-flash"]}).status_code == 200
        assert admin.http.post(f"/admin/v1/keys/{kid}/rotate", json={"grace": "10m"}).status_code == 201
        assert admin.http.delete(f"/admin/v1/keys/{kid}").status_code == 200
        time.sleep(0)  # nothing asynchronous: every record was written with its change

        rows = json.loads(gw.cli("audit", "--since", "1h", "--json").stdout)
        seen = [(r["actor"], r["action"], r["target"]) for r in rows]
        k1, k2 = f"key:{made['id']}", f"key:{rotated['id']}"
        expected = [(me, "account.create", "account:team-a"), (me, "subscription.set", "account:team-a"),
                    (me, "topup.create", "account:team-a"), (me, "key.create", k1), (me, "key.update", k1),
                    (me, "key.rotate", k1), (me, "key.revoke", k2),
                    (me, "admin_token.create", f"admin_token:{tok['id']}"),
                    (me, "admin_token.revoke", f"admin_token:{tok['id']}"),
                    ("admin:env", "account.create", "account:team-b"),
                    ("admin:env", "subscription.set", "account:team-b"), ("admin:env", "key.create", f"key:{kid}"),
                    ("admin:env", "topup.create", "account:team-b"), ("admin:env", "key.update", f"key:{kid}"),
                    ("admin:env", "key.rotate", f"key:{kid}"), ("admin:env", "key.revoke", f"key:{kid}")]
        assert seen == expected
        assert rows[1]["before"] is None and rows[1]["after"]["plan"] == "flash-max"
        update = rows[4]
        assert update["before"]["credit_limit_daily"] is None and update["after"]["credit_limit_daily"] == "20"
        everything = json.dumps(rows)
        assert made["key"] not in everything and rotated["key"] not in everything and tok["token"] not in everything
        assert all(r["at"] > 0 for r in rows)
        text = gw.cli("audit").stdout
        assert "key.rotate" in text and me in text
        assert json.loads(gw.cli("audit", "--since", "2999-01-01", "--json").stdout) == []
        bad = gw.cli("audit", "--since", "yesterday", check=False)
        assert bad.returncode == 1 and "since must be" in bad.stderr
        r = admin.http.get("/admin/v1/audit", params={"since": "1h", "limit": 2}).json()["data"]
        assert [x["action"] for x in r] == ["key.rotate", "key.revoke"]
    finally:
        gw.stop()

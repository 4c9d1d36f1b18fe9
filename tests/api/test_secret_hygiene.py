"""Secret hygiene (issue 16 §5): every error path this test can reach, run with distinctive
secrets (client keys valid, unknown and revoked; the admin token and a wrong one; the upstream key;
the signing secret), then every output searched for them: response bodies and headers, the
gateway's log (stdout and stderr), every table of the database (the ledger included) and /metrics.
Only a key's display prefix (its first 14 characters) may appear anywhere."""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_chunk

PREFIX = 14  # characters of a key shown for display (store/accounts.py)
ADMIN = "ADMINSECRET-" + secrets.token_urlsafe(24)
WRONG_ADMIN = "ADMINWRONG-" + secrets.token_urlsafe(24)
UPSTREAM = "UPSTREAMSECRET-" + secrets.token_urlsafe(24)
SIGNING = "SIGNINGSECRET-" + secrets.token_urlsafe(24)
UNKNOWN_KEY = "sk-step-" + "UNKNOWNCLIENT" + secrets.token_urlsafe(24)
MODEL = "step-3.5-flash"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def hygiene(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("hygiene"), fake, env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    text = gw.config.read_text().replace('api_key = "upstream-secret"', f'api_key = "{UPSTREAM}"')
    gw.config.write_text(text.replace("[server]\n", f'[server]\nsecret = "{SIGNING}"\nheader_timeout = 1.0\n'
                                                    "body_timeout = 1.0\nmax_header_bytes = 8192\n", 1))
    gw.start()
    yield gw
    gw.stop()


class Outputs:
    """Everything the gateway said to anyone during the test."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def response(self, r: httpx.Response) -> httpx.Response:
        self.parts.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    def raw(self, data: bytes) -> None:
        self.parts.append(data.decode("latin-1"))


def leaks(text: str, secret: str, keep: int = 0) -> list[str]:
    """Where any 12 consecutive characters of ``secret`` past its first ``keep`` appear in ``text``."""
    tail = secret[keep:]
    found = []
    for i in range(len(tail) - 11):
        at = text.find(tail[i:i + 12])
        if at >= 0:
            found.append(text[max(0, at - 80):at + 80])
            break
    return found


def raw_exchange(gw: Gateway, data: bytes) -> bytes:
    out = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def upstream_says(fake: FakeUpstream, status: int, message: str) -> None:
    """Every upstream request (retries included) answers ``status`` with ``message``."""
    fake.responder = lambda path, body: Reply(status=status, json={"error": {"message": message, "type": "x"}})


def test_no_secret_reaches_any_output(hygiene: Gateway, fake: FakeUpstream) -> None:
    gw = hygiene
    out = Outputs()
    key = gw.new_key("hygiene")
    doomed = gw.new_key("hygiene")
    base = gw.openai_base

    def chat(k: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return out.response(httpx.post(f"{base}/chat/completions", headers={"authorization": f"Bearer {k}"},
                                       json=body or {"model": MODEL, "messages": MSG}, timeout=30, **kw))

    def messages(k: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return out.response(httpx.post(f"{base}/messages", headers={"x-api-key": k},
                                       json=body or {"model": MODEL, "max_tokens": 8, "messages": MSG}, timeout=30))

    def responses(k: str) -> httpx.Response:
        return out.response(httpx.post(f"{base}/responses", headers={"authorization": f"Bearer {k}"},
                                       json={"model": MODEL, "input": "hi"}, timeout=30))

    # keys: unknown, then a key that worked and was revoked (admin API), on every protocol and route
    for k in (UNKNOWN_KEY, f"Bearer {UNKNOWN_KEY}", UNKNOWN_KEY[:20]):
        assert chat(k).status_code == 401
        assert messages(k).status_code == 401
        assert responses(k).status_code == 401
    for path in ("models", "usage", f"models/{MODEL}", "responses/resp_x"):
        assert out.response(httpx.get(f"{base}/{path}", headers={"authorization": f"Bearer {UNKNOWN_KEY}"},
                                      timeout=10)).status_code == 401
    assert chat(doomed).status_code == 200
    ids = out.response(httpx.get(f"{gw.url}/admin/v1/keys", headers={"authorization": f"Bearer {ADMIN}"},
                                 timeout=10)).json()
    rows = ids.get("data", ids) if isinstance(ids, dict) else ids
    doomed_id = next(r["id"] for r in rows if doomed.startswith(r["prefix"]) and not r.get("revoked_at"))
    assert out.response(httpx.delete(f"{gw.url}/admin/v1/keys/{doomed_id}",
                                     headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)).status_code == 200
    deadline = time.monotonic() + 10  # revocation reaches the serving process within ~0.25 s
    while chat(doomed).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    assert messages(doomed).status_code == 401

    # admin: a wrong token, by both headers, on the admin API and /metrics
    for h in ({"authorization": f"Bearer {WRONG_ADMIN}"}, {"x-admin-token": WRONG_ADMIN}):
        for path in ("admin/v1/accounts", "admin/v1/keys", "metrics"):
            assert out.response(httpx.get(f"{gw.url}/{path}", headers=h, timeout=10)).status_code == 401
    assert out.response(httpx.get(f"{gw.url}/admin/v1/accounts", headers={"x-admin-token": ADMIN},
                                  timeout=10)).status_code == 200

    # the upstream fails and says secrets: its own key, an Authorization header, a client key
    said = f"Incorrect API key provided: Bearer {UPSTREAM}; authorization: {UPSTREAM}; seen {key}"
    for status in (401, 403, 400, 429, 500, 503):
        upstream_says(fake, status, said)
        assert chat(key).status_code >= 400
        if status in (401, 400, 500):  # (429 and 503 are retried with backoff: slow, and the same text path)
            assert messages(key).status_code >= 400
            chat(key, {"model": MODEL, "messages": MSG, "stream": True})  # an HTTP error, or an error event
    fake.responder = None

    # a stream that fails after its first event, with the secret in the upstream's error event
    for cut in (False, True):
        fake.queue_sse([openai_chunk({"role": "assistant", "content": "hel"}),
                        {"error": {"message": said, "type": "server_error"}}], cut=cut)
        r = chat(key, {"model": MODEL, "messages": MSG, "stream": True})
        assert r.status_code == 200

    # malformed bodies, with a valid key: bad JSON, wrong types, unknown roles, deep nesting
    for body in (b"{", b"[]", b'{"model": 1}', b'{"model": "m", "messages": [{"role": "x"}]}', b"x" * 100):
        out.response(httpx.post(f"{base}/chat/completions", content=body, timeout=10,
                                headers={"authorization": f"Bearer {key}", "content-type": "application/json"}))
        out.response(httpx.post(f"{base}/messages", content=body, timeout=10, headers={"x-api-key": key}))

    # connection-level errors with the key in the headers: oversized headers, slow body, bad framing
    head = (b"POST /step_plan/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode() + b"\r\nx-api-key: " + key.encode() + b"\r\n")
    out.raw(raw_exchange(gw, head + b"x-big: " + b"a" * 20_000 + b"\r\n\r\n"))
    out.raw(raw_exchange(gw, head + b"Content-Length: 100\r\n\r\n{"))  # the body never completes: 408
    out.raw(raw_exchange(gw, head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    out.raw(raw_exchange(gw, head.replace(b"Host: x", b"Host: x\x7f") + b"Content-Length: 2\r\n\r\n{}"))

    # /metrics, read with the admin token, is an output too
    metrics = out.response(httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"},
                                     timeout=10))
    assert metrics.status_code == 200 and "stepplan_" in metrics.text

    gw.stop()  # flushes the log writer; the database is read after
    log = gw.log_text()
    with sqlite3.connect(gw.workdir / "stepplan.db") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
        dump = "\n".join(json.dumps(row, default=repr) for t in tables for row in db.execute(f'select * from "{t}"'))
    assert "usage_entries" in tables and len(dump) > 1000, tables  # the ledger
    assert "401" in log or "invalid_api_key" in log, "the log holds no errors: it was not captured"

    places = {"responses": "\n".join(out.parts), "log": log, "database": dump}
    found = {}
    for where, text in places.items():
        for name, secret, keep in (("client key", key, PREFIX), ("revoked key", doomed, PREFIX),
                                   ("unknown key", UNKNOWN_KEY, PREFIX), ("admin token", ADMIN, 0),
                                   ("wrong admin token", WRONG_ADMIN, 0), ("upstream key", UPSTREAM, 0),
                                   ("signing secret", SIGNING, 0)):
            if hits := leaks(text, secret, keep):
                found[f"{name} in {where}"] = hits
    assert not found, json.dumps(found, indent=1)
    gw.start()  # the module fixture stops it again

"""A gateway with the console on (self-service keys, an admin token, trusted proxy headers so
each test can sign in from an address of its own), and a browser-less console client."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

ADMIN = "console-admin-token-0123456789"
CONSOLE = """
[console]
self_service_keys = true
trust_proxy = true
signin_attempts = 5
signin_window_seconds = 600
"""
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
_ip = iter(range(1, 250))


def fresh_ip() -> str:
    """A client address no other test signs in from (sign-in attempts are limited per address)."""
    return f"10.9.{next(_ip)}.7"


@pytest.fixture(scope="session")
def cgw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("console"), fake, extra=CONSOLE, env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    gw.start()
    yield gw
    gw.stop()


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, f"no CSRF field in the page:\n{page[:2000]}"
    return html.unescape(m.group(1))


class Console:
    """An httpx client that keeps the console's cookies, from one client address."""

    def __init__(self, gw: Gateway, ip: str | None = None):
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, timeout=30, headers={"x-forwarded-for": ip or fresh_ip()})
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> httpx.Response:
        body = {**data, "csrf": self.csrf} if csrf else dict(data)
        return self.http.post(path, data=body)

    def page(self, path: str, **kw: Any) -> str:
        r = self.get(path, **kw)
        assert r.status_code == 200, f"GET {path}: {r.status_code}\n{r.text[:2000]}"
        self.csrf = csrf_of(r.text) if 'name="csrf"' in r.text else self.csrf
        return r.text

    def signin(self, key: str) -> httpx.Response:
        self.page("/console/signin")
        return self.post("/console/signin", {"api_key": key})

    def signin_admin(self, token: str = ADMIN) -> httpx.Response:
        self.page("/console/admin/signin")
        return self.post("/console/admin/signin", {"admin_token": token})

    def close(self) -> None:
        self.http.close()


def chat(gw: Gateway, key: str, model: str = "step-3.5-flash") -> str:
    """One model call; returns its trace id (the ledger's request id)."""
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-trace-id"]


def usage(gw: Gateway, key: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.openai_base}/usage", headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_calls(gw: Gateway, key: str, n: int, timeout: float = 30) -> dict[str, Any]:
    """Poll until the account's ledger has ``n`` calls (the ledger writer commits in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        view = usage(gw, key)
        got = sum(r["calls"] for r in view["usage"]["records"])
        if got >= n:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"the ledger has {got} calls, expected {n}")
        time.sleep(0.1)

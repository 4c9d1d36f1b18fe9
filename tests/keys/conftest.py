"""Fixtures for the key-governance tests: a billing gateway that trusts 127.0.0.1 as a proxy (so
``X-Forwarded-For`` picks the client address), an admin client, keys with settings, and one call
helper for each protocol."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.billing.conftest import (  # noqa: F401  (fixtures, registered by import)
    ADMIN,
    Admin,
    _meters_on_the_tests_clock,
    pg_url,
)
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream


def trusting_gateway(tmp: Path, fake: FakeUpstream, *, db_url: str | None = None, env: dict[str, str] | None = None,
                     admin: bool = True) -> Gateway:
    """A started gateway whose ``[server] trusted_proxies`` is 127.0.0.1 (the tests' own address)."""
    gw = make_gateway(tmp, fake, db_url=db_url, env={**({"STEPPLAN_ADMIN_TOKEN": ADMIN} if admin else {}),
                                                      **(env or {})})
    text = gw.config.read_text()
    gw.config.write_text(text.replace("[server]\n", '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n', 1))
    gw.start()
    return gw

# The body of a small call in each protocol.
BODIES: dict[str, dict[str, Any]] = {
    "chat": {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    "messages": {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    "responses": {"max_output_tokens": 16, "input": "hi"},
}
PATHS = {"chat": "/step_plan/v1/chat/completions", "messages": "/step_plan/v1/messages",
         "responses": "/step_plan/v1/responses"}


@pytest.fixture(scope="session")
def kgw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    """A billing gateway (SQLite) that trusts 127.0.0.1 as a proxy."""
    gw = trusting_gateway(tmp_path_factory.mktemp("kgw"), fake)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def kadmin(kgw: Gateway) -> Admin:
    return Admin(kgw)


class Keys:
    """Keys with settings, made through the admin API."""

    def __init__(self, admin: Admin):
        self.admin = admin

    def make(self, account: str | None = None, **settings: Any) -> tuple[int, str, str]:
        """(key id, key, account) for a new key with ``settings`` (admin API field names)."""
        if account is None:
            account, _ = self.admin.account(f"k-{uuid.uuid4().hex[:10]}")
        r = self.admin.http.post(f"/admin/v1/accounts/{account}/keys", json={"name": "t", **settings})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"], account

    def patch(self, key_id: int, **settings: Any) -> httpx.Response:
        return self.admin.http.patch(f"/admin/v1/keys/{key_id}", json=settings)


@pytest.fixture(scope="session")
def keys(kadmin: Admin) -> Keys:
    return Keys(kadmin)


def call(gw: Gateway, key: str, proto: str = "chat", model: str = "step-3.5-flash",
         headers: dict[str, str] | None = None, timeout: float = 60) -> httpx.Response:
    h = {"authorization": f"Bearer {key}", **(headers or {})}
    if proto == "messages":
        h = {"x-api-key": key, "anthropic-version": "2023-06-01", **(headers or {})}
    return httpx.post(f"{gw.url}{PATHS[proto]}", json={"model": model, **BODIES[proto]}, headers=h, timeout=timeout)


def code(r: httpx.Response, proto: str) -> str:
    """The StepFun error code of an error response, in the protocol's own shape."""
    body = r.json()
    if proto == "messages":
        assert body["type"] == "error", body
        return body["error"]["message"].split(":", 1)[0]
    return body["error"]["code"]


def message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]

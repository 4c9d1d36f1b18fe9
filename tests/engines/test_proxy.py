"""Outbound proxies (issue 14 item 4): a real CONNECT proxy on 127.0.0.1 (tests/fakes/connect_proxy.py)
in front of real fake upstreams, http and https (a self-signed certificate the upstream's ``ca_file``
trusts). In-process over the real transport (``HTTPUpstream``), plus how settings resolve
``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` against an explicit ``proxy``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepplan.engines._http import HTTPUpstream
from stepplan.engines._proxy import ProxiedPool, parse_proxy_url
from stepplan.errors import UpstreamError
from stepplan.settings import ConfigError, UpstreamConfig, env_proxies, load_settings, proxy_from_env
from tests.fakes.connect_proxy import ConnectProxy
from tests.fakes.tls import self_signed
from tests.fakes.upstream import FakeUpstream, free_port, openai_completion

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, Path]]:
    ctx, cert = self_signed(tmp_path_factory.mktemp("tls"))
    up = FakeUpstream(ssl_context=ctx).start()
    yield up, cert
    up.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy().start()
    yield p
    p.stop()


@pytest.fixture
def auth_proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy(user="gw", password="p@ss:word").start()
    yield p
    p.stop()


def upstream(base_url: str, proxy: str, ca_file: Path | None = None, **kw: object) -> HTTPUpstream:
    cfg = UpstreamConfig(name="up", base_url=base_url, api_key="sk-upstream", proxy=proxy,
                         ca_file=str(ca_file) if ca_file else None, **kw)  # type: ignore[arg-type]
    cfg.check()
    return HTTPUpstream(cfg, lambda key: {"authorization": f"Bearer {key}"})


async def call(up: HTTPUpstream, times: int = 1) -> list[object]:
    try:
        return [await up.post_json("/chat/completions", BODY) for _ in range(times)]
    finally:
        await up.aclose()


async def test_https_upstream_through_a_connect_tunnel_reuses_the_tunnel(tls: tuple[FakeUpstream, Path],
                                                                         proxy: ConnectProxy) -> None:
    fake, cert = tls
    fake.reset()
    fake.queue_json(openai_completion("one"))
    fake.queue_json(openai_completion("two"))
    up = upstream(fake.base_url, proxy.url(), cert)
    assert isinstance(up.transport, ProxiedPool)
    out = await call(up, 2)
    assert [o["choices"][0]["message"]["content"] for o in out] == ["one", "two"]  # type: ignore[index]
    assert proxy.lines == [f"CONNECT 127.0.0.1:{fake.port} HTTP/1.1"]  # one tunnel, TLS inside, reused
    assert proxy.connections == 1
    assert fake.last.headers["Authorization"] == "Bearer sk-upstream"  # the proxy never saw it: TLS


async def test_https_through_the_tunnel_still_verifies_the_upstream_certificate(tls: tuple[FakeUpstream, Path],
                                                                                proxy: ConnectProxy) -> None:
    fake, _ = tls
    up = upstream(fake.base_url, proxy.url(), max_retries=0)  # the system CAs do not trust the test cert
    with pytest.raises(UpstreamError, match="certificate verify failed"):
        await call(up)
    assert proxy.lines == [f"CONNECT 127.0.0.1:{fake.port} HTTP/1.1"]


async def test_http_upstream_through_the_proxy_in_absolute_form(plain: FakeUpstream, proxy: ConnectProxy) -> None:
    plain.reset()
    up = upstream(plain.base_url, proxy.url())
    await call(up, 2)
    assert proxy.lines == [f"POST http://127.0.0.1:{plain.port}/v1/chat/completions HTTP/1.1"]  # then reused
    assert proxy.connections == 1 and len(plain.requests) == 2


async def test_proxy_authentication_from_the_url(tls: tuple[FakeUpstream, Path], plain: FakeUpstream,
                                                 auth_proxy: ConnectProxy) -> None:
    fake, cert = tls
    await call(upstream(fake.base_url, auth_proxy.url("gw", "p%40ss%3Aword"), cert))
    await call(upstream(plain.base_url, auth_proxy.url("gw", "p%40ss%3Aword")))
    assert auth_proxy.auths == [auth_proxy.expected, auth_proxy.expected]
    assert "proxy-authorization" not in {k.lower() for k in plain.last.headers}  # not forwarded upstream


@pytest.mark.parametrize("https", [True, False])
async def test_wrong_proxy_credentials_are_a_clear_error_naming_the_proxy_not_the_password(
        https: bool, tls: tuple[FakeUpstream, Path], plain: FakeUpstream, auth_proxy: ConnectProxy) -> None:
    fake, cert = tls
    base = fake.base_url if https else plain.base_url
    up = upstream(base, auth_proxy.url("gw", "WRONGSECRET"), cert, max_retries=1)
    with pytest.raises(UpstreamError) as err:
        await call(up)
    msg = str(err.value)
    assert f"proxy 127.0.0.1:{auth_proxy.port}" in msg and "407" in msg and "wrong proxy credentials" in msg
    assert "WRONGSECRET" not in msg and "gw:" not in msg
    assert len(auth_proxy.lines) == 2  # a proxy failure is a member failure: retried within max_retries


async def test_a_refusing_proxy_and_a_proxy_that_is_down(tls: tuple[FakeUpstream, Path]) -> None:
    fake, cert = tls
    refusing = ConnectProxy(refuse=403).start()
    try:
        with pytest.raises(UpstreamError, match=rf"proxy 127\.0\.0\.1:{refusing.port} refused the tunnel to "
                                                rf"127\.0\.0\.1:{fake.port}: 403 Forbidden"):
            await call(upstream(fake.base_url, refusing.url(), cert, max_retries=0))
    finally:
        refusing.stop()
    down = free_port()
    with pytest.raises(UpstreamError, match=rf"cannot connect to proxy 127\.0\.0\.1:{down}"):
        await call(upstream(fake.base_url, f"http://u:hunter2@127.0.0.1:{down}", cert, max_retries=0))


def test_proxy_url_parsing_never_shows_the_password() -> None:
    assert parse_proxy_url("http://a%20b:c%3Ad@proxy.corp:3128") == ("proxy.corp", 3128, "a b:c:d")
    assert parse_proxy_url("proxy.corp:8080") == ("proxy.corp", 8080, None)  # no scheme: http, as curl
    assert parse_proxy_url("http://proxy.corp") == ("proxy.corp", 1080, None)
    for bad in ("socks5://u:hunter2@p:1080", "https://u:hunter2@p:443", "http://u:hunter2@p:3128/path"):
        with pytest.raises(ValueError) as err:
            parse_proxy_url(bad)
        assert "hunter2" not in str(err.value)


def test_environment_proxies_follow_urllib() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "http://h:3",
           "NO_PROXY": "localhost,.internal.corp,10.1.2.3"}
    p = env_proxies(env)
    assert p == {"https": "http://lower:2", "http": "http://h:3", "no": "localhost,.internal.corp,10.1.2.3"}
    assert proxy_from_env(p, "https://api.stepfun.com/v1") == "http://lower:2"
    assert proxy_from_env(p, "http://api.stepfun.com/v1") == "http://h:3"
    assert proxy_from_env(p, "https://llm.internal.corp/v1") == ""  # domain suffix
    assert proxy_from_env(p, "https://localhost:8443/v1") == ""
    assert proxy_from_env(p, "http://10.1.2.3:80/v1") == ""
    assert proxy_from_env(env_proxies({**env, "no_proxy": "*"}), "https://api.stepfun.com/v1") == ""
    assert env_proxies({"HTTP_PROXY": "http://h:3", "REQUEST_METHOD": "GET"}) == {}  # httpoxy
    assert env_proxies({"HTTPS_PROXY": "http://u:1", "https_proxy": ""}) == {}  # empty lower case unsets
    with pytest.raises(ConfigError, match="HTTPS_PROXY: proxy 'socks5://p:1080': only http://") as err:
        proxy_from_env(env_proxies({"HTTPS_PROXY": "socks5://u:hunter2@p:1080"}), "https://x/v1")
    assert "hunter2" not in str(err.value)


CONFIG = """
[upstreams.a]
base_url = "https://api.one.example/v1"
api_key = "k"

[upstreams.b]
base_url = "https://api.two.example/v1"
api_key = "k"
proxy = "http://explicit:3128"

[upstreams.c]
base_url = "https://api.three.example/v1"
api_key = "k"
proxy = ""

[upstreams.pool]
base_url = "https://api.four.example/v1"

[[upstreams.pool.members]]
name = "env"
api_key = "k"

[[upstreams.pool.members]]
name = "own"
api_key = "k"
proxy = "http://member:8080"

[[upstreams.pool.members]]
name = "bypassed"
base_url = "https://llm.internal.corp/v1"
api_key = "k"
"""


def test_settings_explicit_proxy_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    s = load_settings(path, env={"HTTPS_PROXY": "http://envproxy:3128", "NO_PROXY": ".internal.corp"})
    got = {name: [m.proxy for m in up.pool_members()] for name, up in s.upstreams.items()}
    assert got == {"a": ["http://envproxy:3128"], "b": ["http://explicit:3128"], "c": [""],
                   "pool": ["http://envproxy:3128", "http://member:8080", ""]}
    s = load_settings(path, env={})
    assert [m.proxy for m in s.upstreams["a"].pool_members()] == [""]
    path.write_text(CONFIG.replace('proxy = "http://explicit:3128"', 'proxy = "http://u:hunter2@x:1/p"'))
    with pytest.raises(ConfigError, match=r"upstreams\.b\.proxy: proxy 'http://x:1/p' must look like") as err:
        load_settings(path, env={})
    assert "hunter2" not in str(err.value)


def test_ca_file_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstreams.a]\nbase_url = "https://x/v1"\napi_key = "k"\nca_file = "/nonexistent.pem"\n')
    with pytest.raises(ConfigError, match=r"upstreams\.a\.ca_file: '/nonexistent.pem' is not a readable file"):
        load_settings(path, env={})


def test_no_proxy_configured_uses_the_plain_pool(plain: FakeUpstream) -> None:
    up = upstream(plain.base_url, "")
    assert type(up.transport).__name__ == "ConnectionPool"
    asyncio.run(up.aclose())


def test_through_the_gateway_env_proxy_no_proxy_and_a_dead_proxy_in_the_callers_protocol(
        tmp_path: Path, fake: FakeUpstream, tls: tuple[FakeUpstream, Path], proxy: ConnectProxy) -> None:
    """The gateway process: HTTPS_PROXY carries the https upstream (on localhost) through the proxy,
    NO_PROXY=127.0.0.1 keeps the default upstream direct, and a member whose explicit proxy is down
    is a 502 in the caller's protocol that names the proxy, never its password."""
    import httpx

    from tests.billing.conftest import ADMIN, Admin, start_gateway

    up, cert = tls
    up.reset()
    dead = free_port()
    extra = f"""
[upstreams.secure]
base_url = "https://localhost:{up.port}/v1"
api_key = "k"
ca_file = "{cert}"

[upstreams.blocked]
base_url = "https://localhost:{up.port}/v1"
api_key = "k"
ca_file = "{cert}"
max_retries = 0
proxy = "http://corp:hunter2@127.0.0.1:{dead}"

[models."step-3.5-flash"]
upstream = "secure"

[models."step-3.7-flash"]
upstream = "blocked"
"""
    gw = start_gateway(tmp_path, fake, extra=extra,
                       env={"HTTPS_PROXY": proxy.url(), "HTTP_PROXY": proxy.url(), "NO_PROXY": "127.0.0.1"})
    try:
        _, key = Admin(gw).account()
        auth = {"authorization": f"Bearer {key}"}
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers=auth, timeout=30,
                       json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert proxy.lines == [f"CONNECT localhost:{up.port} HTTP/1.1"] and len(up.requests) == 1
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers=auth, timeout=30,  # default upstream: direct
                       json={"model": "step-3.5-flash-2603", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert len(proxy.lines) == 1 and len(fake.requests) == 1
        anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        for path, headers in ((f"{gw.openai_base}/chat/completions", auth),
                              (f"{gw.anthropic_base}/v1/messages", anthropic)):
            r = httpx.post(path, headers=headers, timeout=30, json={
                "model": "step-3.7-flash", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert f"cannot connect to proxy 127.0.0.1:{dead}" in err["message"]
            assert err["type"] == ("api_error" if "messages" in path else "upstream_error")
            assert "hunter2" not in r.text
        assert "hunter2" not in gw.log_text()
        view = httpx.get(f"{gw.url}/admin/v1/upstreams", timeout=10,
                         headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
        proxies = {u["name"]: [m["proxy"] for m in u["members"]] for u in view}
        assert proxies["blocked"] == [f"127.0.0.1:{dead}"] and proxies["secure"] == [f"127.0.0.1:{proxy.port}"]
        assert "hunter2" not in str(view)
    finally:
        gw.stop()


def test_member_keys_and_proxy_passwords_are_secrets_for_the_logs(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace('proxy = "http://member:8080"', 'proxy = "http://u:p%40ss-word@member:8080"')
                    .replace('name = "own"\napi_key = "k"', 'name = "own"\napi_key = "member-own-key"'))
    s = load_settings(path, env={"HTTPS_PROXY": "http://env:envpass-123@envproxy:3128"})
    secrets = set(s.secrets())
    assert {"member-own-key", "p@ss-word", "envpass-123"} <= secrets

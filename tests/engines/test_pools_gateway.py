"""Pools and model fallbacks through the real gateway process, against fake upstreams on
127.0.0.1 (issue 14): a 503 from one member is served by the other and billed once; a member
answering 429 with Retry-After is not used again before it; a model falls back to another
model before the first byte, never after it; x-stepplan-served-by; the admin health view."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.billing.conftest import ADMIN, Admin, expected_micro, start_gateway
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_completion, openai_text_stream

USAGE = {"prompt_tokens": 1_000, "completion_tokens": 200}
MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def members() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(autouse=True)
def _reset_members(members: tuple[FakeUpstream, FakeUpstream]) -> None:
    for f in members:
        f.reset()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream,
       members: tuple[FakeUpstream, FakeUpstream]) -> Iterator[Gateway]:
    a, b = members
    # member a is the first pick (weight 1000 to b's 0.001) until it fails
    extra = f"""
[upstreams.pool]
protocol = "openai"
max_retries = 2
first_byte_timeout = 5
idle_timeout = 5
cooldown_max = 60

[[upstreams.pool.members]]
name = "a"
base_url = "{a.base_url}"
api_key = "key-a"
weight = 1000

[[upstreams.pool.members]]
name = "b"
base_url = "{b.base_url}"
api_key_env = "POOL_KEY_B"
weight = 0.001

[models."step-3.5-flash"]
upstream = "pool"

[models."step-3.7-flash"]
fallbacks = ["step-3.5-flash"]
"""
    g = start_gateway(tmp_path_factory.mktemp("pools"), fake, extra=extra, env={"POOL_KEY_B": "key-b"})
    yield g
    g.stop()


def post(gw: Gateway, key: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "messages": MSGS, "stream": stream,
                            "stream_options": {"include_usage": True}})


def states(gw: Gateway) -> dict[str, dict]:
    r = httpx.get(f"{gw.url}/admin/v1/upstreams", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200, r.text
    [pool] = [u for u in r.json()["data"] if u["name"] == "pool"]
    return {m["name"]: m for m in pool["members"]}


def test_a_503_member_is_skipped_and_the_call_billed_once(gw: Gateway, members: tuple[FakeUpstream, ...]) -> None:
    a, b = members
    admin = Admin(gw)
    name, key = admin.account()
    a.queue_json({"error": {"message": "overloaded"}}, status=503)
    b.queue_json(openai_completion("from b", usage=USAGE))
    r = post(gw, key, "step-3.5-flash")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "from b"
    assert r.headers["x-stepplan-served-by"] == "pool/b"
    assert "key-b" not in str(r.headers)
    assert len(a.requests) == 1 and len(b.requests) == 1
    assert a.last.headers["Authorization"] == "Bearer key-a" and b.last.headers["Authorization"] == "Bearer key-b"
    [entry] = admin.entries(name)
    assert entry["served_model"] == "step-3.5-flash" and entry["status"] == "ok"
    assert admin.consumed(name) == expected_micro("step-3.5-flash", 1_000, 0, 200)
    view = states(gw)
    assert view["a"]["consecutive_failures"] == 1 and view["a"]["failures"] == 1  # its cooldown (~0.2 s) may be over
    assert view["b"]["state"] == "closed" and view["b"]["in_flight"] == 0
    assert "key" not in str(view).replace("api_key", "")  # the keys are never shown


def test_a_429_with_retry_after_keeps_the_member_out_until_then(gw: Gateway,
                                                                  members: tuple[FakeUpstream, ...]) -> None:
    a, b = members
    admin = Admin(gw)
    _, key = admin.account()
    # let a's earlier cooldown (if any) not matter: it answers 429 Retry-After 30 whenever asked
    for _ in range(5):
        a.queue(Reply(status=429, json={"error": {"message": "slow down"}}, headers={"retry-after": "30"}))
    served = []
    for _ in range(5):
        r = post(gw, key, "step-3.5-flash")
        assert r.status_code == 200, r.text
        served.append(r.headers["x-stepplan-served-by"])
    assert served == ["pool/b"] * 5
    assert len(a.requests) <= 1  # at most the first call reached a; none after its Retry-After was given
    assert len(b.requests) == 5


def test_a_model_falls_back_to_another_model_before_the_first_byte(gw: Gateway, fake: FakeUpstream,
                                                                    members: tuple[FakeUpstream, ...]) -> None:
    admin = Admin(gw)
    name, key = admin.account()
    for _ in range(2):  # step-3.7-flash on the default upstream: one try and one retry, both 500
        fake.queue_json({"error": {"message": "down"}}, status=500)
    for member in members:  # whichever member of the pool serves step-3.5-flash
        member.queue_sse(openai_text_stream("fallback", usage=USAGE, pieces=1))
    r = post(gw, key, "step-3.7-flash", stream=True)
    assert r.status_code == 200, r.text
    assert "fallback" in r.text
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    assert r.headers["x-stepplan-served-by"].startswith("pool/")
    assert len(fake.requests) == 2 and sum(len(m.requests) for m in members) == 1
    assert fake.requests[0].body["model"] == "step-3.7-flash"
    [entry] = admin.entries(name)
    assert entry["served_model"] == "step-3.5-flash"
    assert admin.consumed(name) == expected_micro("step-3.5-flash", 1_000, 0, 200)


def test_no_fallback_after_the_first_byte(gw: Gateway, fake: FakeUpstream,
                                          members: tuple[FakeUpstream, ...]) -> None:
    a, b = members
    admin = Admin(gw)
    _, key = admin.account()
    fake.queue_sse(openai_text_stream("partial", pieces=1)[:2], cut=True)
    r = post(gw, key, "step-3.7-flash", stream=True)
    assert r.status_code == 200
    assert "partial" in r.text and "error" in r.text
    assert "x-stepplan-routed-model" not in r.headers
    assert len(a.requests) == 0 and len(b.requests) == 0


def test_config_errors_fail_start_up(tmp_path: Path, fake: FakeUpstream) -> None:
    cases = {
        "cycle": ('[models."step-3.7-flash"]\nfallbacks = ["step-3.5-flash"]\n'
                  '[models."step-3.5-flash"]\nfallbacks = ["step-3.7-flash"]\n', "fallback cycle"),
        "unknown": ('[models."step-3.7-flash"]\nfallbacks = ["no-such-model"]\n',
                    "models.step-3.7-flash.fallbacks: 'no-such-model' is not a model"),
        "nokeys": ('[upstreams.p]\nbase_url = "http://127.0.0.1:9/v1"\n[[upstreams.p.members]]\nname = "x"\n'
                   'api_key_env = "UNSET_KEY_X"\n', "upstreams.p.members: no member has an API key"),
        "weight": ('[upstreams.p]\nbase_url = "http://127.0.0.1:9/v1"\n[[upstreams.p.members]]\nname = "x"\n'
                   'api_key = "k"\nweight = 0\n', "upstreams.p.members[0].weight: must be a number > 0"),
    }
    for case, (extra, message) in cases.items():
        gw = make_gateway(tmp_path / case, fake, extra=extra)
        out = gw.cli("accounts", "list", check=False)  # every command loads (and checks) the config
        text = out.stdout + out.stderr
        assert out.returncode != 0 and message in text, (case, text)


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJ"
       "RU5ErkJggg==")


def test_a_fallback_lacking_a_modality_the_request_uses_is_skipped(gw: Gateway, fake: FakeUpstream,
                                                                  members: tuple[FakeUpstream, ...]) -> None:
    """step-3.7-flash (images) falls back to step-3.5-flash (text only): never for a request with an image."""
    admin = Admin(gw)
    name, key = admin.account()
    for _ in range(2):
        fake.queue_json({"error": {"message": "down"}}, status=500)
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": PNG}}]}]
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "step-3.7-flash", "messages": image})
    assert r.status_code == 502, r.text
    assert len(fake.requests) == 2 and sum(len(m.requests) for m in members) == 0  # the fallback was not tried
    assert admin.consumed(name) == 0

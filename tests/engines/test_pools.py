"""Upstream pools (issue 14): selection, affinity, health, circuit breaker, retry budget across
members and the per-call deadline — in-process over scripted transports, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepplan.engines import _http
from stepplan.engines._http import HTTPUpstream
from stepplan.engines.base import CallContext
from stepplan.engines.pool import CLOSED, HALF_OPEN, OPEN, Pool
from stepplan.engines.transport import ConnectError
from stepplan.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from stepplan.settings import ConfigError, MemberConfig, UpstreamConfig, load_settings

from .scripted import ScriptedTransport, json_answer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_http, "_sleep", record)
    yield slept


def config(*members: MemberConfig, **kw: object) -> UpstreamConfig:
    cfg = UpstreamConfig(name="up", protocol="openai", base_url="http://upstream.invalid/v1",
                         members=list(members), **kw)  # type: ignore[arg-type]
    cfg.check()
    return cfg


def m(name: str, weight: float = 1.0, **kw: object) -> MemberConfig:
    return MemberConfig(name=name, api_key=f"key-{name}", weight=weight, **kw)  # type: ignore[arg-type]


def pooled(cfg: UpstreamConfig, transports: dict[str, ScriptedTransport], clock: Clock) -> HTTPUpstream:
    pool = Pool(cfg, clock, random.Random(7))
    return HTTPUpstream(cfg, lambda key: {"authorization": f"Bearer {key}"}, transports, pool)


ERROR = {"error": {"message": "busy"}}
OK = {"ok": 1}


# ------------------------------------------------------------------------------------ selection
def test_weighted_least_in_flight_selection() -> None:
    clock = Clock()
    pool = Pool(config(m("a", 2), m("b", 1)), clock, random.Random(1))
    a, b = pool.by_name["a"], pool.by_name["b"]
    a.in_flight, b.in_flight = 2, 0
    assert pool.pick() is b  # 2/2 > 0/1
    b.in_flight = 1  # 1/1 == 2/2: a tie, weighted random among a and b ...
    picks = {pool.pick().name for _ in range(200)}  # type: ignore[union-attr]
    assert picks == {"a", "b"}  # ... which picks both
    b.in_flight = 3
    assert pool.pick() is a


def test_ties_are_broken_by_weight() -> None:
    pool = Pool(config(m("a", 3), m("b", 1)), Clock(), random.Random(3))
    counts = {"a": 0, "b": 0}
    for _ in range(4000):
        counts[pool.pick().name] += 1  # type: ignore[union-attr]
    assert 2700 < counts["a"] < 3300  # about 3:1


def test_max_concurrency_and_rpm_take_a_member_out() -> None:
    clock = Clock()
    pool = Pool(config(m("a", max_concurrency=1), m("b", rpm=2)), clock, random.Random(1))
    a, b = pool.by_name["a"], pool.by_name["b"]
    a.acquire(clock())
    b.acquire(clock())
    b.release()
    b.acquire(clock())
    b.release()
    assert pool.pick() is None  # a is at its concurrency cap, b has sent 2 requests this minute
    clock.t += 61
    assert pool.pick() is b
    a.release()
    assert pool.pick() is not None


def test_affinity_keeps_a_conversation_on_its_member_while_healthy() -> None:
    clock = Clock()
    pool = Pool(config(m("a"), m("b"), m("c")), clock, random.Random(5))
    first = pool.pick("s1")
    assert first is not None
    for other in pool.members:  # whatever the load elsewhere
        if other is not first:
            other.in_flight = 0
    first.in_flight = 10
    assert all(pool.pick("s1") is first for _ in range(20))
    first.failed(5.0, clock())
    moved = pool.pick("s1")
    assert moved is not None and moved is not first
    assert pool.pick("s1") is moved  # and it sticks to its new member
    clock.t += 1801  # the affinity expires
    assert pool.affinity.get("s1", clock()) is None


# ------------------------------------------------------------------------------------ health
def test_breaker_opens_after_n_failures_then_half_open_lets_one_probe() -> None:
    clock = Clock()
    pool = Pool(config(m("a"), breaker_failures=2), clock)
    a = pool.by_name["a"]
    a.failed(1.0, clock())
    assert a.state == CLOSED and pool.pick() is None  # cooling down
    clock.t += 1.5
    assert pool.pick() is a
    a.failed(2.0, clock())
    assert a.state == OPEN and pool.pick() is None
    clock.t += 2.5
    probe = pool.pick()
    assert probe is a and a.state == HALF_OPEN
    a.acquire(clock())
    assert pool.pick() is None  # one probe at a time
    a.failed(4.0, clock())
    assert a.state == OPEN and pool.pick() is None
    clock.t += 4.5
    assert pool.pick() is a
    a.acquire(clock())
    a.succeeded()
    a.release()
    assert a.state == CLOSED and a.failures == 0 and pool.pick() is a


def test_cooldown_is_capped() -> None:
    clock = Clock()
    pool = Pool(config(m("a"), cooldown_max=3.0), clock)
    pool.by_name["a"].failed(1000.0, clock())
    assert pool.by_name["a"].cooldown_until == clock() + 3.0


# ------------------------------------------------------------------------------------ the upstream
async def test_a_503_moves_to_another_member_and_cools_the_first_down() -> None:
    clock = Clock()
    ta, tb = ScriptedTransport(json_answer(ERROR, 503)), ScriptedTransport(json_answer(OK))
    up = pooled(config(m("a", 100), m("b", 1)), {"a": ta, "b": tb}, clock)
    up.pool.rng = random.Random(0)
    ctx = CallContext("t")
    up.pool.by_name["b"].in_flight = 1  # make a the first pick
    assert await up.post_json("/x", {"model": "m"}, ctx=ctx) == OK
    up.pool.by_name["b"].in_flight -= 1
    assert len(ta.requests) == 1 and len(tb.requests) == 1
    assert ta.requests[0].header_dict()["authorization"] == "Bearer key-a"
    assert tb.requests[0].header_dict()["authorization"] == "Bearer key-b"
    assert ctx.served_by == "up/b"
    a = up.pool.by_name["a"]
    assert a.cooldown_until > clock() and a.failures == 1 and a.in_flight == 0
    assert up.pool.by_name["b"].in_flight == 0
    # while a cools down, every call goes to b
    tb.steps += [json_answer(OK)] * 3
    for _ in range(3):
        await up.post_json("/x", {})
    assert len(ta.requests) == 1 and len(tb.requests) == 4


async def test_429_retry_after_keeps_the_member_out_until_then(no_sleep: list[float]) -> None:
    clock = Clock()
    ta = ScriptedTransport(json_answer(ERROR, 429, **{"retry-after": "7"}))
    tb = ScriptedTransport(*[json_answer(OK)] * 5)
    up = pooled(config(m("a"), m("b")), {"a": ta, "b": tb}, clock)
    up.pool.by_name["b"].in_flight = 1
    await up.post_json("/x", {})
    up.pool.by_name["b"].in_flight = 0
    assert up.pool.by_name["a"].cooldown_until == clock() + 7
    clock.t += 6.9
    for _ in range(3):
        await up.post_json("/x", {})
    assert len(ta.requests) == 1  # not before its Retry-After
    clock.t += 0.2
    ta.steps.append(json_answer(OK))
    up.pool.by_name["b"].in_flight = 1
    await up.post_json("/x", {})
    assert len(ta.requests) == 2
    assert no_sleep == []  # another member was always there: nobody waited


async def test_a_400_or_404_never_cools_a_member() -> None:
    clock = Clock()
    ta = ScriptedTransport(json_answer({"error": {"message": "bad"}}, 400),
                           json_answer({"error": {"message": "no"}}, 404))
    up = pooled(config(m("a")), {"a": ta}, clock)
    for _ in range(2):
        with pytest.raises((InvalidRequest, UpstreamError, Exception)):
            await up.post_json("/x", {})
    a = up.pool.by_name["a"]
    assert a.failures == 0 and a.cooldown_until == 0.0 and a.state == CLOSED and len(ta.requests) == 2


async def test_the_retry_budget_counts_every_send_across_members() -> None:
    clock = Clock()
    ts = {n: ScriptedTransport(*[ConnectError("refused")] * 5) for n in "abcd"}
    up = pooled(config(*(m(n) for n in "abcd"), max_retries=2), ts, clock)  # type: ignore[arg-type]
    with pytest.raises(UpstreamError, match="cannot reach upstream up"):
        await up.post_json("/x", {})
    assert sum(len(t.requests) for t in ts.values()) == 3
    assert sorted(len(t.requests) for t in ts.values()) == [0, 1, 1, 1]  # three different members


async def test_when_every_member_cools_the_call_waits_for_the_first_back(no_sleep: list[float]) -> None:
    clock = Clock()
    ta = ScriptedTransport(json_answer(ERROR, 503, **{"retry-after": "2"}), json_answer(OK))
    up = pooled(config(m("a")), {"a": ta}, clock)
    assert await up.post_json("/x", {}) == OK
    assert no_sleep == [2.0]


async def test_a_cooldown_longer_than_the_deadline_fails_fast() -> None:
    clock = Clock()
    ta = ScriptedTransport(json_answer(ERROR, 503, **{"retry-after": "20"}))
    up = pooled(config(m("a"), deadline=5.0), {"a": ta}, clock)
    with pytest.raises(UpstreamError, match="cooling down"):
        await up.post_json("/x", {})
    assert len(ta.requests) == 1


async def test_the_deadline_ends_a_hung_upstream_with_a_504() -> None:
    class Hanging(ScriptedTransport):
        async def handle_request(self, request):  # type: ignore[no-untyped-def]
            self.requests.append(request)
            await asyncio.sleep(30)

    t = Hanging()
    up = HTTPUpstream(config(m("a"), deadline=0.2, first_byte_timeout=100.0, max_retries=5), {}, t)
    with pytest.raises(UpstreamTimeout, match=r"0\.2s deadline"):
        await up.post_json("/x", {})
    assert len(t.requests) == 1 and up.pool.by_name["a"].in_flight == 0

    t2 = Hanging()
    up = HTTPUpstream(config(m("a"), deadline=0.2, first_byte_timeout=100.0), {}, t2)
    with pytest.raises(UpstreamTimeout, match="deadline"):
        async for _ in up.stream("/x", {}):
            pass


async def test_per_member_upstream_model_and_streams_release_the_member() -> None:
    clock = Clock()
    ta = ScriptedTransport(ConnectError("refused"))
    tb = ScriptedTransport(json_answer(OK))
    up = pooled(config(m("a", upstream_model={"step-3.5-flash": "flash-a"}), m("b")), {"a": ta, "b": tb}, clock)
    up.pool.by_name["b"].in_flight = 1
    await up.post_json("/x", {"model": "step-3.5-flash", "n": 1}, model="step-3.5-flash")
    up.pool.by_name["b"].in_flight = 0
    assert ta.sent() == {"model": "flash-a", "n": 1}
    assert tb.sent() == {"model": "step-3.5-flash", "n": 1}


def test_a_single_member_upstream_is_a_pool_of_one() -> None:
    cfg = UpstreamConfig(name="up", base_url="http://x.invalid/v1", api_key="k")
    cfg.check()
    pool = Pool(cfg)
    assert [(x.name, x.cfg.base_url, x.cfg.api_key) for x in pool.members] == [("default", "http://x.invalid/v1", "k")]


# ------------------------------------------------------------------------------------ config
def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


POOL = """
[upstreams.sf]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
[[upstreams.sf.members]]
name = "a"
api_key_env = "KEY_A"
weight = 2
[[upstreams.sf.members]]
name = "b"
base_url = "http://127.0.0.2:9/v1"
api_key_env = "KEY_B"
max_concurrency = 4
upstream_model = {"step-3.5-flash" = "flash"}
"""


def test_config_pool_members_load(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, POOL), env={"KEY_A": "ka", "KEY_B": "kb"})
    members = s.upstreams["sf"].pool_members()
    assert [(x.name, x.base_url, x.api_key, x.weight) for x in members] == [
        ("a", "http://127.0.0.1:9/v1", "ka", 2.0), ("b", "http://127.0.0.2:9/v1", "kb", 1.0)]
    assert members[1].max_concurrency == 4 and members[1].upstream_model == {"step-3.5-flash": "flash"}


@pytest.mark.parametrize(("text", "env", "message"), [
    (POOL, {}, r"upstreams\.sf\.members: no member has an API key \(is KEY_A, KEY_B set\?\)"),
    (POOL.replace("weight = 2", "weight = 0"), {"KEY_A": "k"},
     r"upstreams\.sf\.members\[0\]\.weight: must be a number > 0"),
    (POOL.replace("weight = 2", "weight = -1"), {"KEY_A": "k"}, r"members\[0\]\.weight"),
    (POOL.replace('name = "b"', 'name = "a"'), {"KEY_A": "k"}, r"members\[1\]\.name: 'a' is used by another member"),
    (POOL.replace("max_concurrency = 4", "max_concurrency = 0"), {"KEY_A": "k"}, r"members\[1\]\.max_concurrency"),
    (POOL.replace("weight = 2", "wieght = 2"), {"KEY_A": "k"}, r"members\[0\]\.wieght: unknown key"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), env=env)


async def test_a_401_takes_the_member_out_and_a_pool_of_one_fails_at_once(no_sleep: list[float]) -> None:
    """401/403: the member's key is refused — breaker open for cooldown_max, the call moves on;
    with nobody left it is a 502 without the upstream's text, and nobody waits for the cooldown."""
    clock = Clock()
    secret_echo = {"error": {"message": "Incorrect API key provided: key-a"}}
    ta, tb = ScriptedTransport(json_answer(secret_echo, 401)), ScriptedTransport(json_answer(OK))
    up = pooled(config(m("a", 100), m("b", 1), cooldown_max=45), {"a": ta, "b": tb}, clock)
    up.pool.by_name["b"].in_flight = 1  # make a the first pick
    assert await up.post_json("/x", {}) == OK
    up.pool.by_name["b"].in_flight = 0
    a = up.pool.by_name["a"]
    assert a.state == OPEN and a.cooldown_until == clock() + 45 and a.credentials_rejected
    assert up.pool.view()["members"][0]["credentials_rejected"] is True

    single = pooled(config(m("only")), {"only": ScriptedTransport(json_answer(secret_echo, 403))}, clock)
    with pytest.raises(UpstreamError) as err:
        await single.post_json("/x", {})
    assert err.value.status == 502 and err.value.upstream_status == 403
    assert "rejected the gateway's credentials (HTTP 403)" in str(err.value)
    assert "key-" not in str(err.value) and "Incorrect" not in str(err.value)
    assert no_sleep == []  # failed at once, not after waiting out its own cooldown


async def test_upstream_error_text_is_scrubbed_of_credentials() -> None:
    clock = Clock()
    t = ScriptedTransport(json_answer({"error": {"message": "bad model for sk-abcdef123456 / Bearer xyz.123456"}},
                                      404))
    up = pooled(config(m("a")), {"a": t}, clock)
    with pytest.raises(Exception) as err:
        await up.post_json("/x", {})
    assert "sk-abcdef123456" not in str(err.value) and "xyz.123456" not in str(err.value)

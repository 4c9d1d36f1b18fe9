"""Keep-alive pings while a stream waits for its first token, and the per-call deadline ending a
hung upstream (issue 14 items 4 and 6), through the real gateway against the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.billing.conftest import ADMIN, Admin
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, Reply, openai_text_stream

EXTRA = """
[upstreams.slow]
protocol = "openai"
base_url = "{base}"
api_key = "k"
first_byte_timeout = 30
max_retries = 3
deadline = 1.5

[models."step-3.5-flash"]
upstream = "slow"

[upstreams.pingpool]
protocol = "openai"
first_byte_timeout = 30
max_retries = 2
deadline = 10

[[upstreams.pingpool.members]]
name = "a"
base_url = "{base}"
api_key = "ka"
weight = 1000

[[upstreams.pingpool.members]]
name = "b"
base_url = "{base}"
api_key = "kb"
weight = 0.001

[models."step-3.7-flash"]
upstream = "pingpool"
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    g = make_gateway(tmp_path_factory.mktemp("pings"), fake, extra=EXTRA.format(base=fake.base_url),
                     env={"STEPPLAN_ADMIN_TOKEN": ADMIN})
    g.config.write_text(g.config.read_text().replace("[server]\n", "[server]\nstream_ping_seconds = 0.25\n", 1))
    g.start()
    yield g
    g.stop()


MSGS = [{"role": "user", "content": "hi"}]


def openai_stream(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "step-3.5-flash", "messages": MSGS, "stream": True})


def test_a_slow_first_token_gets_pings_then_the_answer(gw: Gateway, fake: FakeUpstream) -> None:
    _, key = Admin(gw).account()
    fake.queue(Reply(sse=openai_text_stream("late answer", pieces=1), first_delay=1.0))
    r = openai_stream(gw, key)
    assert r.status_code == 200
    assert r.text.startswith(": ping\n\n")
    assert "late answer" in r.text and r.text.rstrip().endswith("data: [DONE]")


def test_a_hung_upstream_ends_at_the_deadline_with_an_error_event(gw: Gateway, fake: FakeUpstream) -> None:
    admin = Admin(gw)
    name, key = admin.account()
    for _ in range(4):
        fake.queue(Reply(hang=True))
    r = openai_stream(gw, key)
    assert r.status_code == 200  # the stream had started (pings)
    assert ": ping" in r.text and "upstream_timeout" in r.text and "1.5s deadline" in r.text
    assert len(fake.requests) == 1  # the deadline, not 3 retries × first_byte_timeout
    [entry] = admin.entries(name)
    assert int(entry["charged"]) == 0  # nothing produced, nothing charged


def test_a_hung_upstream_non_streamed_is_a_504_at_the_deadline(gw: Gateway, fake: FakeUpstream) -> None:
    _, key = Admin(gw).account()
    fake.queue(Reply(hang=True))
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "step-3.5-flash", "messages": MSGS})
    assert r.status_code == 504 and "deadline" in r.text


def test_anthropic_clients_get_ping_events(gw: Gateway, fake: FakeUpstream) -> None:
    _, key = Admin(gw).account()
    fake.queue(Reply(sse=openai_text_stream("late", pieces=1), first_delay=1.0))
    r = httpx.post(f"{gw.anthropic_base}/v1/messages", timeout=30,
                   headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                   json={"model": "step-3.5-flash", "max_tokens": 100, "messages": MSGS, "stream": True})
    assert r.status_code == 200
    assert r.text.startswith('event: ping\ndata: {"type": "ping"}\n\n')
    assert "event: message_start" in r.text and "event: message_stop" in r.text


@pytest.mark.parametrize("proto", ["chat", "messages"])
def test_a_pinged_stream_says_what_served_it_in_the_stream_not_in_its_early_headers(
        gw: Gateway, fake: FakeUpstream, proto: str) -> None:
    """Member a answers 503 only after pings went out (the head with them); b then serves. The
    head cannot know that: it carries no served-by, and an SSE comment at the first upstream
    byte names b — which the protocols' own SDKs skip."""
    _, key = Admin(gw).account()
    fake.queue(Reply(status=503, json={"error": {"message": "busy"}}, first_delay=0.8))
    fake.queue(Reply(sse=openai_text_stream("from b", pieces=1)))
    if proto == "chat":
        r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                       timeout=30, json={"model": "step-3.7-flash", "messages": MSGS, "stream": True})
    else:
        r = httpx.post(f"{gw.anthropic_base}/v1/messages", timeout=30,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": "step-3.7-flash", "max_tokens": 100, "messages": MSGS, "stream": True})
    assert r.status_code == 200
    assert "x-stepplan-served-by" not in r.headers  # it left before the first member failed
    # which member goes first depends on the cooldowns earlier tests left: the second one served
    tried = [{"Bearer ka": "a", "Bearer kb": "b"}[f.headers["Authorization"]] for f in fake.requests]
    assert len(tried) == 2 and tried[0] != tried[1]
    before, sep, after = r.text.partition(f": x-stepplan-served-by: pingpool/{tried[1]}\n\n")
    assert sep and "ping" in before and "from b" in after and "from b" not in before


def test_sdks_skip_the_served_by_comment(gw: Gateway, fake: FakeUpstream) -> None:
    import anthropic
    import openai

    _, key = Admin(gw).account()
    fake.queue(Reply(sse=openai_text_stream("late answer", pieces=1), first_delay=0.6))
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, timeout=30, max_retries=0)
    chunks = list(client.chat.completions.create(model="step-3.7-flash", messages=MSGS, stream=True))  # type: ignore
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "late answer"
    fake.queue(Reply(sse=openai_text_stream("late answer", pieces=1), first_delay=0.6))
    aclient = anthropic.Anthropic(base_url=gw.anthropic_base, api_key=key, timeout=30, max_retries=0)
    with aclient.messages.stream(model="step-3.7-flash", max_tokens=100, messages=MSGS) as stream:  # type: ignore
        assert "".join(stream.text_stream) == "late answer"

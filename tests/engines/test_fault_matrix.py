"""Fault-injection matrix (issue 14): every upstream fault, on both client protocols (Chat
Completions and Messages, and the Responses API), streamed and not, through the real gateway
against fake upstreams on 127.0.0.1. For each: what the client sees, which member served (``x-stepplan-served-by``), and
what was billed (exactly what served; nothing for a failed call; for a stream broken after its
first byte, what was delivered — docs/billing.md "Usage that is billed").

The pool ``faulty`` has member ``a`` (weight 1000: always the first pick) and ``b`` (the spare);
``gone`` has a member on a port nobody listens on, then ``b``. Cooldowns are capped at 10 ms and
breakers never open, so every test meets ``a`` again; each test waits until both are available.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.billing.conftest import ADMIN, Admin, expected_micro, start_gateway
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, Reply, free_port, openai_completion, openai_text_stream

USAGE = {"prompt_tokens": 1_000, "completion_tokens": 200, "total_tokens": 1_200}
MSGS = [{"role": "user", "content": "hello"}]
SECRET = "sk-upstream-SECRET-1234567890"  # what a real upstream echoes in a 401 (the gateway's key)
ERR = {"error": {"message": "trouble"}}
MODEL, GONE_MODEL = "step-3.5-flash", "step-3.5-flash-2603"


@pytest.fixture(scope="module")
def members() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream,
       members: tuple[FakeUpstream, FakeUpstream]) -> Iterator[Gateway]:
    a, b = members
    common = "protocol = \"openai\"\nmax_retries = 3\nfirst_byte_timeout = 1\nidle_timeout = 2\n" \
             "cooldown_max = 0.01\nbreaker_failures = 1000\n"
    extra = f"""
[upstreams.faulty]
{common}
[[upstreams.faulty.members]]
name = "a"
base_url = "{a.base_url}"
api_key = "{SECRET}"
weight = 1000

[[upstreams.faulty.members]]
name = "b"
base_url = "{b.base_url}"
api_key = "sk-upstream-b-0987654321"
weight = 0.001

[upstreams.gone]
{common}
[[upstreams.gone.members]]
name = "gone"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key = "k-gone"
weight = 1000

[[upstreams.gone.members]]
name = "b"
base_url = "{b.base_url}"
api_key = "k-b"
weight = 0.001

[models."{MODEL}"]
upstream = "faulty"

[models."{GONE_MODEL}"]
upstream = "gone"
"""
    g = start_gateway(tmp_path_factory.mktemp("faults"), fake, extra=extra)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def _fresh(gw: Gateway, members: tuple[FakeUpstream, FakeUpstream]) -> Iterator[None]:
    for f in members:
        f.reset()
    deadline = time.monotonic() + 15  # a Retry-After or cooldown from the test before is over
    while True:
        r = httpx.get(f"{gw.url}/admin/v1/upstreams", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
        views = [m for u in r.json()["data"] for m in u["members"] if u["name"] in ("faulty", "gone")]
        if all(m["available"] for m in views if m["name"] != "gone") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    yield


def call(gw: Gateway, key: str, proto: str, stream: bool, model: str = MODEL) -> httpx.Response:
    if proto == "chat":
        body: dict[str, Any] = {"model": model, "messages": MSGS, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return httpx.post(f"{gw.openai_base}/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
    if proto == "responses":
        return httpx.post(f"{gw.openai_base}/responses", json={"model": model, "input": "hello", "stream": stream,
                                                              "store": False},
                          timeout=30, headers={"authorization": f"Bearer {key}"})
    return httpx.post(f"{gw.anthropic_base}/v1/messages", timeout=30,
                      json={"model": model, "messages": MSGS, "max_tokens": 256, "stream": stream},
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


def text_of(r: httpx.Response, proto: str, stream: bool) -> str:
    if stream or proto == "responses":
        return r.text
    body = r.json()
    return body["choices"][0]["message"]["content"] if proto == "chat" else body["content"][0]["text"]


def stream_error(r: httpx.Response, proto: str) -> bool:
    """The stream carries an error in the caller's protocol and then ends."""
    if proto == "messages":
        return "event: error" in r.text
    if proto == "responses":
        return "event: error" in r.text or "event: response.failed" in r.text
    return any(line.startswith("data: {") and "error" in orjson.loads(line[6:])
               for line in r.text.splitlines())


def good(b: FakeUpstream, stream: bool) -> None:
    if stream:
        b.queue_sse(openai_text_stream("from b", usage=USAGE, pieces=1))
    else:
        b.queue_json(openai_completion("from b", usage=USAGE))


BEFORE_FIRST_BYTE: dict[str, list[Reply]] = {
    "reset before headers": [Reply(reset=True)],
    "429 with Retry-After": [Reply(status=429, json=ERR, headers={"retry-after": "1"})],
    "500": [Reply(status=500, json=ERR)],
    "502": [Reply(status=502, json=ERR)],
    "503": [Reply(status=503, json=ERR)],
    "timeout before headers": [Reply(first_delay=2.5, json=openai_completion("too late", usage=USAGE))],
    "upstream 401": [Reply(status=401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}})],
    "upstream 403": [Reply(status=403, json={"error": {"message": f"key {SECRET} may not use this model"}})],
}
CASES = [(fault, proto, stream) for fault in [*BEFORE_FIRST_BYTE, "connect refused"]
         for proto in ("chat", "messages", "responses") for stream in (False, True)]


@pytest.mark.parametrize(("fault", "proto", "stream"), CASES)
def test_a_fault_before_the_first_byte_moves_to_another_member(
        gw: Gateway, members: tuple[FakeUpstream, FakeUpstream], fault: str, proto: str, stream: bool) -> None:
    a, b = members
    admin = Admin(gw)
    name, key = admin.account()
    model = GONE_MODEL if fault == "connect refused" else MODEL
    for reply in BEFORE_FIRST_BYTE.get(fault, []):
        a.queue(reply)
    good(b, stream)
    r = call(gw, key, proto, stream, model)
    assert r.status_code == 200, r.text
    assert "from b" in text_of(r, proto, stream)
    assert r.headers["x-stepplan-served-by"] == ("gone/b" if fault == "connect refused" else "faulty/b")
    assert len(b.requests) == 1
    assert len(a.requests) == (0 if fault == "connect refused" else 1)
    [entry] = admin.entries(name)
    assert entry["status"] == "ok" and entry["served_model"] == model
    assert admin.consumed(name) == expected_micro(model, 1_000, 0, 200)  # b's answer, once
    assert SECRET not in r.text and SECRET not in str(r.headers)
    if fault.startswith("upstream 40"):
        view = {m["name"]: m for u in httpx.get(f"{gw.url}/admin/v1/upstreams", timeout=10,
                                                headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
                if u["name"] == "faulty" for m in u["members"]}
        assert view["a"]["credentials_rejected"] is True and view["b"]["credentials_rejected"] is False


@pytest.mark.parametrize("proto", ["chat", "messages"])
@pytest.mark.parametrize("stream", [False, True])
def test_every_member_rejecting_the_credentials_is_a_502_without_the_upstreams_text(
        gw: Gateway, members: tuple[FakeUpstream, FakeUpstream], proto: str, stream: bool) -> None:
    admin = Admin(gw)
    name, key = admin.account()
    for f in members:
        f.queue(Reply(status=401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
    r = call(gw, key, proto, stream)
    text = r.text
    assert r.status_code == 502, text
    assert r.json()["error"]["type"] == ("api_error" if proto == "messages" else "upstream_error")
    assert "rejected the gateway's credentials" in text
    assert SECRET not in text and "Incorrect API key" not in text
    assert sum(len(f.requests) for f in members) == 2  # each member once, then no one is left
    assert admin.consumed(name) == 0
    assert SECRET not in gw.log_text()


@pytest.mark.parametrize("proto", ["chat", "messages", "responses"])
@pytest.mark.parametrize("fault", ["reset mid-stream", "malformed SSE after the first byte"])
def test_a_fault_after_the_first_byte_ends_the_stream_with_an_error_and_bills_what_was_delivered(
        gw: Gateway, members: tuple[FakeUpstream, FakeUpstream], proto: str, fault: str) -> None:
    a, b = members
    admin = Admin(gw)
    name, key = admin.account()
    head = openai_text_stream("partial answer", usage=USAGE, pieces=1)[:2]  # role, then the text
    if fault == "reset mid-stream":
        a.queue_sse(head, cut=True)
    else:
        a.queue_sse([*head, b"data: {not json\n\n"])
    good(b, True)
    r = call(gw, key, proto, True)
    assert r.status_code == 200
    assert "partial answer" in r.text and stream_error(r, proto), r.text
    assert r.headers["x-stepplan-served-by"] == "faulty/a"
    assert len(b.requests) == 0  # never retried after the first byte
    [entry] = admin.entries(name)
    assert entry["usage_known"] is False
    assert entry["output_tokens"] >= 1  # what was delivered, counted by the gateway
    assert admin.consumed(name) > 0


@pytest.mark.parametrize("proto", ["chat", "messages"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_broken_answer_before_the_first_byte_is_a_clean_error_billed_nothing(
        gw: Gateway, members: tuple[FakeUpstream, FakeUpstream], proto: str, stream: bool) -> None:
    a, b = members
    admin = Admin(gw)
    name, key = admin.account()
    if stream:
        a.queue_sse([b"data: {not json\n\n"])  # malformed SSE as the first event
    else:
        a.queue(Reply(raw=b'{"id": "x", "object": "chat.completion", "choices": [{"mess'))  # truncated JSON
    good(b, stream)
    r = call(gw, key, proto, stream)
    # a stream's head waits for the upstream's first byte (or the first ping): a clean 502 here
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == ("api_error" if proto == "messages" else "upstream_error")
    assert "invalid JSON" in r.text or "malformed stream event" in r.text
    assert "x-stepplan-served-by" not in r.headers  # a failed call was served by no one
    assert len(b.requests) == 0  # the answer's head had arrived: never resent
    assert admin.consumed(name) == 0

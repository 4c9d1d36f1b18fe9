"""Billing holes found by fault injection (issue 11 §4), on both client protocols and both
upstream kinds:

* usage is final only when the upstream says so: a stream that ends early (the client goes
  away, or the upstream breaks) bills at least what was delivered, counted here, never the
  placeholder ``output_tokens: 1`` of Anthropic's ``message_start``;
* upstream usage is validated: negative, fractional or absurd counts (whose cost the ledger
  cannot hold) are an upstream defect, logged, and the call is counted locally;
* a stream of well-formed JSON frames of the wrong shape is a protocol error (502 before
  the first byte, an error event after it), billed for what was delivered.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.billing.conftest import Admin
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_chunk

MODEL = "step-3.5-flash"
WORD = " hello"  # one token with the gateway's tokenizer, so N deltas count as N output tokens
UPSTREAMS = ("openai", "anthropic")
CLIENTS = ("openai", "anthropic")


# ---------------------------------------------------------------------------------------- upstream scripts
def openai_stream(n: int, *, finish: bool = True, usage: dict[str, Any] | None = None) -> list[Any]:
    chunks: list[Any] = [openai_chunk({"role": "assistant", "content": ""})]
    chunks += [openai_chunk({"content": WORD}) for _ in range(n)]
    if finish:
        chunks.append(openai_chunk({}, "stop"))
        if usage is not None:
            chunks.append({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                           "choices": [], "usage": usage})
        chunks.append("[DONE]")
    return chunks


def anthropic_stream(n: int, *, finish: bool = True, start_usage: dict[str, Any] | None = None,
                     final_usage: dict[str, Any] | None = None) -> list[Any]:
    u = start_usage or {"input_tokens": 11, "output_tokens": 1}
    ev: list[Any] = [("message_start", {"type": "message_start", "message": {
        "id": "msg_up1", "type": "message", "role": "assistant", "model": "fake", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": u}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    ev += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": WORD}}) for _ in range(n)]
    if finish:
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        ev.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": final_usage or {"output_tokens": n}}))
        ev.append(("message_stop", {"type": "message_stop"}))
    return ev


def script(upstream: str, n: int, **kw: Any) -> list[Any]:
    return openai_stream(n, **kw) if upstream == "openai" else anthropic_stream(n, **kw)


# ---------------------------------------------------------------------------------------- client side
def request(gw: Gateway, client: str, key: str, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "count"}]}
    if stream:
        body["stream"] = True
    if client == "openai":
        return f"{gw.openai_base}/chat/completions", {"authorization": f"Bearer {key}"}, body
    return f"{gw.openai_base}/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, body


def text_delta(client: str, line: str) -> str | None:
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return None
    data = orjson.loads(line[5:])
    if client == "openai":
        choices = data.get("choices") or [{}]
        return (choices[0].get("delta") or {}).get("content") or None
    if data.get("type") == "content_block_delta" and data["delta"].get("type") == "text_delta":
        return data["delta"]["text"]
    return None


def is_error_event(client: str, line: str) -> bool:
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return False
    data = orjson.loads(line[5:])
    return "error" in data if client == "openai" else data.get("type") == "error"


def read_stream(gw: Gateway, client: str, key: str, *, stop_after: int | None = None) -> tuple[int, list[str]]:
    """Stream a call; returns (status, lines). With ``stop_after`` the client closes the socket
    after that many text deltas."""
    url, headers, body = request(gw, client, key, True)
    lines: list[str] = []
    seen = 0
    with httpx.stream("POST", url, headers=headers, json=body, timeout=30) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.text]
        for line in r.iter_lines():
            lines.append(line)
            if text_delta(client, line) is not None:
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    break
    return 200, lines


def entry(admin: Admin, name: str, n: int = 1) -> dict[str, Any]:
    """The newest ledger entry once the account has ``n`` of them (settlement may trail a disconnect)."""
    deadline = time.monotonic() + 15
    while True:
        entries = admin.entries(name)
        if len(entries) >= n or time.monotonic() > deadline:
            assert len(entries) >= n, f"no ledger entry for {name} after 15 s"
            return entries[0]
        time.sleep(0.05)


@pytest.fixture
def gateways(bgw: Gateway, bgw_anth: Gateway, admin: Admin, admin_anth: Admin) -> dict[str, tuple[Gateway, Admin]]:
    return {"openai": (bgw, admin), "anthropic": (bgw_anth, admin_anth)}


# ---------------------------------------------------------------------------------------- early ends
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_a_client_that_disconnects_mid_stream_is_billed_what_was_delivered(
        gateways: dict[str, tuple[Gateway, Admin]], fake: FakeUpstream, upstream: str, client: str) -> None:
    gw, admin = gateways[upstream]
    name, key = admin.account()
    fake.queue_sse(script(upstream, 64), delay=0.05)
    status, _ = read_stream(gw, client, key, stop_after=28)
    assert status == 200
    e = entry(admin, name)
    assert e["status"] == "client_disconnect"
    # at least the 28 deltas the client read, at most what the upstream had sent; never the placeholder 1
    assert 28 <= e["output_tokens"] < 64, e
    assert e["usage_known"] is False
    if upstream == "anthropic":
        assert e["input_tokens"] == 11  # message_start's input count is the upstream's and is kept
    assert int(e["charged"]) == int(e["cost"]) > 0 and admin.check()["ok"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_an_upstream_that_breaks_mid_stream_is_billed_what_was_delivered(
        gateways: dict[str, tuple[Gateway, Admin]], fake: FakeUpstream, upstream: str, client: str) -> None:
    gw, admin = gateways[upstream]
    name, key = admin.account()
    fake.queue_sse(script(upstream, 28, finish=False), cut=True)
    status, lines = read_stream(gw, client, key)
    assert status == 200
    assert sum(1 for ln in lines if text_delta(client, ln) is not None) == 28
    assert any(is_error_event(client, ln) for ln in lines), lines[-3:]
    e = entry(admin, name)
    assert e["status"] == "upstream_error" and e["output_tokens"] == 28 and e["usage_known"] is False
    assert admin.check()["ok"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_complete_anthropic_stream_is_billed_the_upstreams_final_count(
        gateways: dict[str, tuple[Gateway, Admin]], fake: FakeUpstream, client: str) -> None:
    gw, admin = gateways["anthropic"]
    name, key = admin.account()
    fake.queue_sse(anthropic_stream(5, final_usage={"output_tokens": 40}))  # the upstream's word wins
    assert read_stream(gw, client, key)[0] == 200
    e = entry(admin, name)
    assert (e["status"], e["input_tokens"], e["output_tokens"], e["usage_known"]) == ("ok", 11, 40, True)


# ---------------------------------------------------------------------------------------- invalid usage
BAD_USAGE = {
    "negative": ({"prompt_tokens": -1000, "completion_tokens": -5}, {"input_tokens": -1000, "output_tokens": -5}),
    "fractional": ({"prompt_tokens": 10.5, "completion_tokens": 3}, {"input_tokens": 10.5, "output_tokens": 3}),
    "string": ({"prompt_tokens": "12", "completion_tokens": 3}, {"input_tokens": "12", "output_tokens": 3}),
    "absurd": ({"prompt_tokens": 10**15, "completion_tokens": 10**15},
               {"input_tokens": 10**15, "output_tokens": 10**15}),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("kind", list(BAD_USAGE))
def test_invalid_upstream_usage_is_counted_locally(
        gateways: dict[str, tuple[Gateway, Admin]], fake: FakeUpstream, kind: str, upstream: str, client: str,
        stream: bool) -> None:
    gw, admin = gateways[upstream]
    name, key = admin.account()
    o_usage, a_usage = BAD_USAGE[kind]
    if upstream == "openai":
        if stream:
            fake.queue_sse(openai_stream(6, usage=o_usage))
        else:
            fake.queue_json({"id": "up-1", "object": "chat.completion", "created": 1, "model": "fake",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": WORD * 6}}],
                             "usage": o_usage})
    elif stream:
        fake.queue_sse(anthropic_stream(6, start_usage={"input_tokens": 11, "output_tokens": 1},
                                        final_usage=a_usage))
    else:
        fake.queue_json({"id": "msg_up1", "type": "message", "role": "assistant", "model": "fake",
                         "content": [{"type": "text", "text": WORD * 6}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": a_usage})
    if stream:
        status, _ = read_stream(gw, client, key)
        remaining = None
    else:
        url, headers, body = request(gw, client, key, False)
        r = httpx.post(url, headers=headers, json=body, timeout=30)
        status, remaining = r.status_code, r.headers.get("x-stepplan-credit-remaining")
    assert status == 200
    e = entry(admin, name)
    assert e["usage_known"] is False and e["status"] == "ok"
    assert e["output_tokens"] == 6 and 0 < e["input_tokens"] < 1000  # counted here from what was sent
    assert int(e["charged"]) == int(e["cost"]) > 0 and e["uncollected"] == "0"
    view = admin.usage(name)["plan_credit_rate_limit"]
    if remaining is not None:  # the header and the usage API agree once the entry is written
        assert remaining == view["credit_left"]
    assert admin.check()["ok"]


def test_absurd_usage_leaves_no_stranded_lease_and_the_ledger_check_passes(
        bgw: Gateway, admin: Admin, fake: FakeUpstream) -> None:
    """13 calls reporting 10^15 tokens: every one has its ledger entry, and once the leases sit
    idle they are all returned (before the fix ~1M Credit per call stayed leased until restart)."""
    name, key = admin.account()
    for _ in range(13):
        fake.queue_json({"id": "up-1", "object": "chat.completion", "created": 1, "model": "fake",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "x"}}],
                         "usage": {"prompt_tokens": 10**15, "completion_tokens": 1}})
        url, headers, body = request(bgw, "openai", key, False)
        assert httpx.post(url, headers=headers, json=body, timeout=30).status_code == 200
    assert len(admin.entries(name)) == 13
    deadline = time.monotonic() + 20
    while True:
        buckets = admin.usage(name)["plan_credit_rate_limit"]["credit_buckets"]
        if all(b["credit_in_flight_micro"] == "0" for b in buckets) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(b["credit_in_flight_micro"] == "0" for b in buckets), buckets
    assert admin.check()["ok"]


# ---------------------------------------------------------------------------------------- wrong shapes
WRONG = {"object": {"foo": 1}, "array": [1, 2, 3], "number": 7, "bad-choice": {"choices": [5]}}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("frame", list(WRONG))
def test_stream_frames_of_the_wrong_shape_before_the_first_byte_are_a_502(
        bgw: Gateway, admin: Admin, fake: FakeUpstream, frame: str, client: str) -> None:
    name, key = admin.account()
    fake.queue_sse([WRONG[frame], WRONG[frame], "[DONE]"])
    status, body = read_stream(bgw, client, key)
    assert status == 502, body
    err = orjson.loads(body[0])
    message = err["error"]["message"]
    assert "wrong shape" in message and "upstream" in message
    e = entry(admin, name)
    assert e["status"] == "upstream_error" and e["charged"] == "0"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_stream_frames_of_the_wrong_shape_after_output_end_in_an_error_event(
        gateways: dict[str, tuple[Gateway, Admin]], fake: FakeUpstream, upstream: str, client: str) -> None:
    gw, admin = gateways[upstream]
    name, key = admin.account()
    fake.queue_sse([*script(upstream, 5, finish=False), [1, 2, 3], *script(upstream, 3)[2:]])
    status, lines = read_stream(gw, client, key)
    assert status == 200
    assert sum(1 for ln in lines if text_delta(client, ln) is not None) == 5
    assert any(is_error_event(client, ln) for ln in lines), lines[-3:]
    e = entry(admin, name)
    assert e["status"] == "upstream_error" and e["output_tokens"] == 5 and int(e["charged"]) > 0

"""Hostile clients (issue 16 §4 and §6): header count and size limits, slow-loris headers and
bodies, a body shorter than its Content-Length, request smuggling and invalid header bytes.
Each ends quickly with an error in the caller's protocol, and normal traffic is unaffected."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, openai_text_stream

LIMITS = "\nheader_timeout = 1.0\nbody_timeout = 1.0\nmax_headers = 50\nmax_header_bytes = 16384\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("guard"), fake)
    gw.config.write_text(gw.config.read_text().replace('[server]\ndefault_upstream = "fake"',
                                                       '[server]\ndefault_upstream = "fake"' + LIMITS))
    gw.start()
    yield gw
    gw.stop()


def exchange(gw: Gateway, raw: bytes, *, then_wait: float = 10.0) -> tuple[float, bytes]:
    """Send ``raw``, then read until the server closes; returns (seconds until closed, what came back)."""
    t0 = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=then_wait) as sock:
        if raw:
            sock.sendall(raw)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return time.monotonic() - t0, out


def status_and_json(out: bytes) -> tuple[int, dict]:
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def request_head(path: str = "/step_plan/v1/chat/completions", extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra)


def test_too_many_headers_is_a_431(guarded: Gateway) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    _, out = exchange(guarded, request_head(extra=headers) + b"Content-Length: 2\r\n\r\n{}")
    status, body = status_and_json(out)
    assert status == 431 and "more than 50 request headers" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/step_plan/v1/chat/completions", "/step_plan/v1/messages"])
def test_a_huge_header_is_a_431_in_the_callers_protocol(guarded: Gateway, path: str) -> None:
    _, out = exchange(guarded, request_head(path, b"x-big: " + b"a" * 1_000_000 + b"\r\n\r\n"))
    status, body = status_and_json(out)
    assert status == 431
    if "messages" in path:
        assert body["type"] == "error" and "larger than 16384 bytes" in body["error"]["message"]
    else:
        assert body["error"]["code"] == "request_params_invalid"


@pytest.mark.parametrize("raw", [b"", b"POST /step_plan/v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "],
                         ids=["silent", "slow-headers"])
def test_slow_or_silent_connections_are_closed(guarded: Gateway, raw: bytes) -> None:
    took, out = exchange(guarded, raw)
    assert took < 8  # header_timeout is 1 s; the fixed 10 s socket timeout would mean it was never closed
    if out:
        assert status_and_json(out)[0] == 408


@pytest.mark.parametrize("authorized", [True, False])
def test_a_body_shorter_than_its_content_length_times_out(guarded: Gateway, authorized: bool) -> None:
    auth = b"Authorization: Bearer " + guarded.new_key("trickle").encode() + b"\r\n" if authorized else b""
    took, out = exchange(guarded, request_head(extra=auth + b"Content-Length: 1000\r\n\r\n{\"model\":"))
    assert took < 8  # the body timer (1 s) closes the connection, answered (401) or not
    assert status_and_json(out)[0] == (408 if authorized else 401)


@pytest.mark.parametrize("extra", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # smuggling: both framings
    b"X-Bad: a\x7fb\r\nContent-Length: 2\r\n\r\n{}",  # a DEL byte in a header value
], ids=["cl-te", "del"])
def test_malformed_requests_get_a_json_400(guarded: Gateway, extra: bytes) -> None:
    _, out = exchange(guarded, request_head(extra=extra))
    status, body = status_and_json(out)
    assert status == 400 and "malformed HTTP request" in body["error"]["message"]


def test_a_slow_stream_is_not_cut_by_the_timeouts(guarded: Gateway, fake: FakeUpstream) -> None:
    """The timers cover reading the request only: a response that takes longer than both runs on."""
    key = guarded.new_key("slow-stream")
    fake.queue_sse(openai_text_stream("one two three four", pieces=4), delay=0.6)  # ~3.6 s in all
    text = ""
    with httpx.stream("POST", f"{guarded.openai_base}/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "step-3.5-flash", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                d = json.loads(line[6:])
                text += "".join((c.get("delta") or {}).get("content") or "" for c in d.get("choices", []))
    assert text == "one two three four"
    with httpx.Client(timeout=30) as c:  # keep-alive requests after an idle pause still work
        for _ in range(2):
            r = c.post(f"{guarded.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200


def test_limits_are_configurable(tmp_path: Path) -> None:
    from stepplan.settings import load_settings

    (tmp_path / "c.toml").write_text("[server]" + LIMITS)
    s = load_settings(tmp_path / "c.toml", env={})
    assert (s.max_headers, s.max_header_bytes, s.header_timeout, s.body_timeout) == (50, 16384, 1.0, 1.0)

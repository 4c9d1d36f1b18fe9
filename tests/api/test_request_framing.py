"""Requests whose HTTP framing lies (issue 16 §4), over raw sockets against a live gateway: a body
longer or shorter than its Content-Length, two Content-Lengths, Content-Length with
Transfer-Encoding (request smuggling, in several spellings), malformed chunks. Each gets one clean
JSON 400 in the caller's protocol (or the body timeout's 408) and the connection closes: no hang,
and a request hidden behind a smuggled framing is never served."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

BODY = b'{"model":"step-3.5-flash","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def framed(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[tuple[Gateway, str]]:
    gw = make_gateway(tmp_path_factory.mktemp("framing"), fake)
    gw.config.write_text(gw.config.read_text().replace(
        "[server]\n", "[server]\nheader_timeout = 2.0\nbody_timeout = 2.0\n", 1))
    gw.start()
    yield gw, gw.new_key("framing")
    gw.stop()


def head(key: str, path: str = "/step_plan/v1/chat/completions") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n")


def exchange(gw: Gateway, raw: bytes) -> tuple[float, list[tuple[int, bytes]]]:
    """Send ``raw``; read until the server closes. Returns the seconds that took and each response's
    (status, body)."""
    t0 = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(raw)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    took = time.monotonic() - t0
    responses = []
    while out.startswith(b"HTTP/1.1 "):
        headers, _, rest = out.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        responses.append((int(headers.split(b" ")[1]), rest[:length]))
        out = rest[length:]
    return took, responses


LIES = {
    "longer-than-content-length": b"Content-Length: 10\r\n\r\n" + BODY,
    "two-content-lengths": b"Content-Length: 10\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
    "negative-content-length": b"Content-Length: -1\r\n\r\n" + BODY,
    "signed-content-length": b"Content-Length: +%d\r\n\r\n" % len(BODY) + BODY,
    "content-length-beyond-64-bits": b"Content-Length: 99999999999999999999999\r\n\r\n" + BODY,
    "cl-and-te": b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-unknown-coding": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-chunked-not-last": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_framing_is_one_json_400_and_the_connection_closes(framed: tuple[Gateway, str], lie: str) -> None:
    gw, key = framed
    took, responses = exchange(gw, head(key) + LIES[lie])
    assert took < 5, f"the connection stayed open {took:.1f} s"
    assert [s for s, _ in responses] == [400], responses
    assert "malformed HTTP request" in json.loads(responses[0][1])["error"]["message"]


def test_a_smuggled_request_is_never_served(framed: tuple[Gateway, str], fake: FakeUpstream) -> None:
    """Content-Length says the body is 4 bytes, chunked framing ends it at once: a front proxy that
    trusted one and the gateway the other would disagree on where the hidden POST starts."""
    gw, key = framed
    hidden = head(key) + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    raw = head(key) + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden
    took, responses = exchange(gw, raw)
    assert took < 5 and [s for s, _ in responses] == [400]
    assert fake.requests == [], "the hidden request reached the upstream"


def test_anthropic_path_gets_anthropic_shape(framed: tuple[Gateway, str]) -> None:
    gw, key = framed
    _, responses = exchange(gw, head(key, "/step_plan/v1/messages") + LIES["cl-and-te"])
    status, body = responses[0]
    assert status == 400 and json.loads(body)["type"] == "error"


def test_a_body_shorter_than_its_content_length_ends_with_a_408(framed: tuple[Gateway, str]) -> None:
    gw, key = framed
    took, responses = exchange(gw, head(key) + b"Content-Length: %d\r\n\r\n" % (len(BODY) + 50) + BODY)
    assert took < 6 and [s for s, _ in responses] == [408]


def test_honest_pipelined_requests_are_both_served(framed: tuple[Gateway, str]) -> None:
    gw, key = framed
    one = head(key) + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    last = head(key).replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n") + (
        b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    took, responses = exchange(gw, one + last)
    assert [s for s, _ in responses] == [200, 200] and took < 10

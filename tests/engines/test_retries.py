"""The retry logic of ``stepplan.engines._http`` over a scripted transport (no sockets).

At most ``1 + max_retries`` requests reach the upstream per call, whatever failed: 429/5xx,
connect errors, a first-byte timeout, and a reused connection found closed (the resend counts).
Nothing is retried once the response head has arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from stepplan.engines import _http
from stepplan.engines._http import HTTPUpstream
from stepplan.engines.transport import ConnectError, RemoteProtocolError, StaleConnection
from stepplan.errors import RateLimited, UpstreamError, UpstreamTimeout
from stepplan.settings import UpstreamConfig

from .scripted import Scripted, ScriptedTransport, json_answer, sse_answer


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Record the backoff delays instead of sleeping them."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_http, "_sleep", record)
    yield slept


def upstream(transport: ScriptedTransport, **cfg: object) -> HTTPUpstream:
    config = UpstreamConfig(name="up", protocol="openai", base_url="http://upstream.invalid/v1",
                            **cfg)  # type: ignore[arg-type]
    return HTTPUpstream(config, {"authorization": "Bearer k"}, transport)


ERROR = {"error": {"message": "busy"}}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
async def test_retryable_statuses_are_retried_until_an_answer(status: int) -> None:
    t = ScriptedTransport(json_answer(ERROR, status), json_answer(ERROR, status), json_answer({"ok": 1}))
    assert await upstream(t, max_retries=2).post_json("/chat/completions", {"a": 1}) == {"ok": 1}
    assert len(t.requests) == 3
    assert all(r.body == b'{"a":1}' and r.path == "/chat/completions" for r in t.requests)


async def test_retries_stop_at_max_retries_and_the_last_answer_is_the_error() -> None:
    t = ScriptedTransport(*[json_answer(ERROR, 429, **{"retry-after": "1"}) for _ in range(3)])
    with pytest.raises(RateLimited, match="busy"):
        await upstream(t, max_retries=2).post_json("/chat/completions", {})
    assert len(t.requests) == 3


async def test_retry_after_is_honoured(no_backoff_sleep: list[float]) -> None:
    t = ScriptedTransport(json_answer(ERROR, 503, **{"retry-after": "2.5"}), json_answer({}))
    await upstream(t).post_json("/x", {})
    assert no_backoff_sleep == [2.5]


async def test_client_errors_are_not_retried() -> None:
    t = ScriptedTransport(json_answer({"error": {"message": "bad field"}}, 400))
    with pytest.raises(Exception, match="bad field"):
        await upstream(t, max_retries=5).post_json("/x", {})
    assert len(t.requests) == 1


async def test_connect_errors_are_retried_within_the_budget() -> None:
    t = ScriptedTransport(ConnectError("refused"), ConnectError("refused"), json_answer({"ok": 1}))
    assert await upstream(t, max_retries=2).post_json("/x", {}) == {"ok": 1}

    t = ScriptedTransport(*[ConnectError("refused")] * 3)
    with pytest.raises(UpstreamError, match="cannot reach upstream up: refused"):
        await upstream(t, max_retries=2).post_json("/x", {})
    assert len(t.requests) == 3


async def test_a_stale_connection_resend_counts_against_the_budget(no_backoff_sleep: list[float]) -> None:
    """Issue 14 item 6: an upstream that resets before answering got 3-8 POSTs per call with
    max_retries = 2. Every resend now counts: exactly 1 + max_retries requests, no more."""
    t = ScriptedTransport(*[StaleConnection("closed before answering")] * 10)
    with pytest.raises(UpstreamError, match="bad answer from upstream up"):
        await upstream(t, max_retries=2).post_json("/x", {})
    assert len(t.requests) == 3
    assert no_backoff_sleep == []  # a stale keep-alive connection is resent at once

    t = ScriptedTransport(StaleConnection("closed"), RemoteProtocolError("reset"), StaleConnection("closed"),
                          json_answer({"ok": 1}))
    with pytest.raises(UpstreamError):
        await upstream(t, max_retries=2).post_json("/x", {})
    assert len(t.requests) == 3

    t = ScriptedTransport(StaleConnection("closed"), json_answer({"ok": 1}))
    assert await upstream(t, max_retries=1).post_json("/x", {}) == {"ok": 1}


async def test_no_answer_within_first_byte_timeout_is_retried_then_a_504() -> None:
    class Hanging(ScriptedTransport):
        async def handle_request(self, request):  # type: ignore[no-untyped-def]
            self.requests.append(request)
            await asyncio.sleep(10)

    t = Hanging()
    with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.01s"):
        await upstream(t, max_retries=1, first_byte_timeout=0.01).post_json("/x", {})
    assert len(t.requests) == 2


async def test_nothing_is_retried_after_the_first_byte() -> None:
    broken = sse_answer([{"choices": []}])
    broken.error_after = RemoteProtocolError("reset mid-stream")
    t = ScriptedTransport(broken, sse_answer([b"data: [DONE]\n\n"]))
    got: list[bytes] = []
    with pytest.raises(UpstreamError, match="broke off the stream: reset mid-stream"):
        async for chunk in upstream(t, max_retries=2).stream("/chat/completions", {}):
            got.append(chunk)
    assert len(t.requests) == 1 and got and broken.closed

    body = json_answer({})
    body.error_after = RemoteProtocolError("cut")
    t = ScriptedTransport(body, json_answer({}))
    with pytest.raises(UpstreamError, match="failed mid-response"):
        await upstream(t, max_retries=2).post_json("/x", {})
    assert len(t.requests) == 1


async def test_a_stream_request_answered_with_a_json_error_document_is_an_error() -> None:
    t = ScriptedTransport(json_answer({"error": {"message": "quota"}}))
    with pytest.raises(UpstreamError, match="did not stream: quota"):
        async for _ in upstream(t).stream("/chat/completions", {}):
            pass


async def test_headers_sent_are_auth_config_extra_and_accept() -> None:
    t = ScriptedTransport(json_answer({}), Scripted(200, {"content-type": "text/event-stream"}, [b""]))
    up = upstream(t, headers={"x-org": "o"})
    await up.post_json("/x", {}, {"x-trace": "t1"})
    h = t.requests[0].header_dict()
    assert h["authorization"] == "Bearer k" and h["x-org"] == "o" and h["x-trace"] == "t1"
    assert h["content-type"] == "application/json" and h["accept"] == "application/json"
    async for _ in up.stream("/x", {}):
        pass
    assert t.requests[1].header_dict()["accept"] == "text/event-stream"
    await up.aclose()
    assert t.closed


async def test_an_upstream_resetting_warm_keep_alive_connections_gets_one_plus_max_retries_posts() -> None:
    """Issue 14 item 6 over real sockets: a warm pool of idle connections, then an upstream that
    closes every connection as soon as a request arrives. Before, each attempt walked the idle
    connections (3-8 POSTs per call with max_retries = 2); now exactly 3."""
    state = {"reset": False, "posts": 0}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                state["posts"] += 1
                if state["reset"]:
                    return
                await asyncio.sleep(0.02)  # keep the warm-up requests overlapping: one connection each
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    config = UpstreamConfig(name="up", protocol="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    up = HTTPUpstream(config, {})
    try:
        await asyncio.gather(*[up.post_json("/x", {}) for _ in range(4)])  # four idle keep-alive connections
        state["reset"], state["posts"] = True, 0
        with pytest.raises(UpstreamError):
            await up.post_json("/x", {})
        assert state["posts"] == 3
    finally:
        await up.aclose()
        srv.close()


class _Hangs:
    """A transport whose answer never comes."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle_request(self, request: object) -> Scripted:
        self.requests += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


class _Drips(Scripted):
    """A head at once, then a body that never finishes."""

    async def chunks(self):  # type: ignore[no-untyped-def]
        yield b'{"a":'
        await asyncio.Event().wait()


async def test_total_timeout_bounds_the_wait_for_the_head_when_it_ends_before_the_deadline() -> None:
    t = _Hangs()
    up = HTTPUpstream(UpstreamConfig(name="up", protocol="openai", base_url="http://upstream.invalid/v1",
                                     total_timeout=0.2, max_retries=0), {}, t)  # type: ignore[arg-type]
    with pytest.raises(UpstreamTimeout, match=r"total_timeout 0\.2s"):
        await up.post_json("/x", {})
    assert t.requests == 1


async def test_total_timeout_bounds_a_body_that_is_still_arriving() -> None:
    t = ScriptedTransport(_Drips(200, {"content-type": "application/json"}))
    with pytest.raises(UpstreamTimeout, match="timed out"):
        await upstream(t, total_timeout=0.2).post_json("/x", {})

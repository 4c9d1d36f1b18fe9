"""The upstream HTTP/1.1 client (`stepplan.engines._h1`) against hand-written raw servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from stepplan.engines._h1 import (
    ConnectError,
    ConnectionPool,
    ReadTimeout,
    RemoteProtocolError,
    render_headers,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


@asynccontextmanager
async def server(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, dict]]:
    state: dict = {"connections": 0, "requests": [], "closed": asyncio.Event()}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["connections"] += 1
        try:
            await handler(reader, writer, state)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port, state
    finally:
        srv.close()


def answer(raw: bytes, *, hold: bool = True) -> Handler:
    """A server that reads one request, sends ``raw``, then either waits for the client to close
    the connection (``hold``; sets ``state["closed"]`` when it does) or hangs up at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        if hold:
            await reader.read()
            state["closed"].set()

    return handler


def json_answer(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def keep_alive(reply: Callable[[dict], bytes]) -> Handler:
    """A keep-alive server: every request on a connection is noted and answered with ``reply(state)``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        while True:
            try:
                line, headers, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            state["requests"].append((line, headers, body))
            writer.write(reply(state))
            await writer.drain()

    return handler


keep_alive_json = keep_alive(lambda state: json_answer(b'{"n": %d}' % len(state["requests"])))


async def test_requests_reuse_one_keep_alive_connection_and_send_what_was_asked() -> None:
    async with server(keep_alive_json) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}/v1/")
        for i in (1, 2, 3):
            resp = await pool.request("POST", "/chat/completions", render_headers({"x-k": "v"}), b'{"a":1}',
                                      idle_timeout=5)
            assert resp.status == 200 and resp.headers["content-type"] == "application/json"
            assert await resp.read() == b'{"n": %d}' % i
        await pool.aclose()
    assert state["connections"] == 1
    line, headers, body = state["requests"][0]
    assert line == b"POST /v1/chat/completions HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{port}" and headers["x-k"] == "v" and headers["content-length"] == "7"
    assert body == b'{"a":1}'


async def test_a_chunked_stream_is_delivered_as_it_arrives() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\ndata:1\r\n")
        await writer.drain()
        await gate.wait()  # the second chunk only goes out once the client has seen the first
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep-alive: wait for the client to go

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/s", b"", b"{}", idle_timeout=5)
        got = []
        async for chunk in resp.chunks():
            got.append(chunk)
            gate.set()
        assert got == [b"data:1", b"data:2"]
        assert len(pool._idle) == 1  # a completed keep-alive answer returns its connection
        await pool.aclose()


async def test_a_close_delimited_body_ends_at_eof() -> None:
    handler = answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", hold=False)

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        assert await resp.read() == b"all of it"
        assert not pool._idle and pool._count == 0


async def test_gzip_bodies_are_decoded() -> None:
    payload = b'{"text": "' + b"x" * 5000 + b'"}'

    handler = answer(json_answer(gzip.compress(payload), b"Content-Encoding: gzip\r\n"))

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        assert await resp.read() == payload
        await pool.aclose()


async def test_a_pooled_connection_the_server_closed_is_replaced_transparently() -> None:
    handler = answer(json_answer(b"{}"), hold=False)  # keep-alive by default, but the server hangs up anyway

    async with server(handler) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        assert await (await pool.request("POST", "/", b"", b"", idle_timeout=5)).read() == b"{}"
        await asyncio.sleep(0.05)
        assert await (await pool.request("POST", "/", b"", b"", idle_timeout=5)).read() == b"{}"
        await pool.aclose()
    assert state["connections"] == 2


async def test_a_fresh_connection_closed_before_answering_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        await read_request(reader)

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        with pytest.raises(RemoteProtocolError, match="before answering"):
            await pool.request("POST", "/", b"", b"", idle_timeout=5)
        assert pool._count == 0


async def test_a_body_cut_short_is_an_error_not_a_short_answer() -> None:
    handler = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", hold=False)

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        with pytest.raises(RemoteProtocolError, match="mid-response"):
            await resp.read()
        assert pool._count == 0


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    handler = answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        with pytest.raises(RemoteProtocolError, match="malformed"):
            await pool.request("POST", "/", b"", b"", idle_timeout=5)


async def test_an_idle_upstream_times_out_and_its_connection_is_dropped() -> None:
    handler = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")

    async with server(handler) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=0.2)
        chunks = resp.chunks()
        assert await chunks.__anext__() == b"abc"
        with pytest.raises(ReadTimeout):
            await chunks.__anext__()
        await asyncio.wait_for(state["closed"].wait(), 5)
        assert pool._count == 0


async def test_leaving_a_stream_early_closes_its_connection() -> None:
    handler = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")

    async with server(handler) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        chunks = resp.chunks()
        assert await chunks.__anext__() == b"abc"
        await chunks.aclose()
        await asyncio.wait_for(state["closed"].wait(), 5)
        assert pool._count == 0 and not pool._idle


async def test_leaving_a_stream_whose_body_has_fully_arrived_keeps_its_connection() -> None:
    """A client that stops at OpenAI's ``[DONE]`` after the body's last chunk was parsed leaves a
    clean connection: it goes back to the pool instead of costing a new TCP connection per stream."""

    handler = keep_alive(lambda state: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

    async with server(handler) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        for _ in range(3):
            resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
            chunks = resp.chunks()
            assert await chunks.__anext__() == b"data: [DONE]\n\n"
            deadline = asyncio.get_running_loop().time() + 5
            while not resp._conn.reusable:  # type: ignore[union-attr]  # the last chunk is parsed
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.005)
            await chunks.aclose()  # stopped at [DONE], before the generator saw the end
            assert len(pool._idle) == 1
        assert state["connections"] == 1
        await pool.aclose()


async def test_max_connections_makes_callers_wait_for_a_free_connection() -> None:
    async with server(keep_alive_json) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}", max_connections=1)
        first = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        second = asyncio.ensure_future(pool.request("POST", "/", b"", b"", idle_timeout=5))
        await asyncio.sleep(0.05)
        assert not second.done()  # the only connection is busy
        await first.read()  # ... until this answer is read and the connection returns
        resp = await asyncio.wait_for(second, 5)
        assert await resp.read() == b'{"n": 2}'
        await pool.aclose()
    assert state["connections"] == 1


async def test_connection_refused_is_a_connect_error() -> None:
    async with server(keep_alive_json) as (port, _):
        pass  # the port is free again
    pool = ConnectionPool(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError, match="cannot connect"):
        await pool.request("POST", "/", b"", b"", idle_timeout=5)
    assert pool._count == 0


def test_header_injection_and_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError):
        render_headers({"x-a": "1\r\nx-b: 2"})
    with pytest.raises(ValueError):
        ConnectionPool("ftp://example.com")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_https_upstreams_are_verified_and_work(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    srv_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv_ctx.load_cert_chain(cert, key)
    async with server(keep_alive_json, srv_ctx) as (port, _):
        untrusted = ConnectionPool(f"https://127.0.0.1:{port}")
        with pytest.raises(ConnectError):
            await untrusted.request("POST", "/", b"", b"{}", idle_timeout=5)
        trusted = ConnectionPool(f"https://127.0.0.1:{port}", ssl_context=ssl.create_default_context(cafile=cert))
        resp = await trusted.request("POST", "/x", b"", b"{}", idle_timeout=5)
        assert resp.status == 200 and await resp.read() == b'{"n": 1}'
        await trusted.aclose()


@pytest.mark.parametrize(("upstream", "message"), [
    ('base_url = "localhost:8000/v1"', "must be an http"),
    ('base_url = "http://127.0.0.1:99999/v1"', "must be an http"),
    ('base_url = "http://127.0.0.1/v1"\nheaders = { "x-a" = "1\\r\\nx-b: 2" }', "invalid header"),
    ('base_url = "http://127.0.0.1/v1"\napi_key = "sk-1\\n"', "invalid header"),
    ('base_url = "http://127.0.0.1/v1"\nheaders = { "x-a" = 1 }', "table of strings"),
])
def test_an_unusable_upstream_config_is_refused_at_start_up(tmp_path: Path, upstream: str, message: str) -> None:
    from stepplan.settings import load_settings

    cfg = tmp_path / "stepplan.toml"
    cfg.write_text(f'[upstreams.up]\nprotocol = "openai"\n{upstream}\n')
    with pytest.raises(ValueError, match=message) as err:
        load_settings(cfg, env={})
    assert "upstreams.up" in str(err.value)


async def test_a_body_that_came_with_its_head_is_taken_at_once_and_its_connection_reused() -> None:
    handler = keep_alive(lambda state: json_answer(b'{"ok": 1}'))  # head and body in one write

    async with server(handler) as (port, state):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        for _ in range(3):
            resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
            deadline = asyncio.get_running_loop().time() + 5
            body = resp.read_now()
            while body is None and asyncio.get_running_loop().time() < deadline:  # the body's bytes may
                await asyncio.sleep(0.01)  # trail the head on a loaded machine: then it is taken later
                body = resp.read_now()
            assert body == b'{"ok": 1}'
        assert state["connections"] == 1, "each answer taken at once gives its connection back"
        await pool.aclose()


async def test_a_body_still_arriving_is_not_taken_at_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # until the client hangs up

    async with server(handler) as (port, _):
        pool = ConnectionPool(f"http://127.0.0.1:{port}")
        resp = await pool.request("POST", "/", b"", b"", idle_timeout=5)
        assert resp.read_now() is None
        resp.close()
        await pool.aclose()

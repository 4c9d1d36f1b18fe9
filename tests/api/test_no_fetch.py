"""The gateway never fetches a URL a client sent (issue 16 §4, SSRF): image, video and document URLs
pointing at a listening local port (loopback, as a metadata or internal address would be) are
forwarded to the upstream as they are, and nothing ever connects to that port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream


@pytest.fixture
def canary() -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def connections(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_client_urls_are_forwarded_never_fetched(gateway: Gateway, key: str, fake: FakeUpstream,
                                                canary: tuple[socket.socket, str]) -> None:
    sock, url = canary
    auth = {"authorization": f"Bearer {key}"}
    calls = [
        ("chat/completions", {"model": "step-3.7-flash", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"{url}/image.png"}},
            {"type": "video_url", "video_url": {"url": f"{url}/video.mp4"}}]}]}),
        ("messages", {"model": "step-3.7-flash", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": f"{url}/anthropic.png"}},
            {"type": "text", "text": "look"}]}]}),
        ("responses", {"model": "step-3.7-flash", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": f"{url}/responses.png"}]}]}),
    ]
    for path, body in calls:
        r = httpx.post(f"{gateway.openai_base}/{path}", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
    sent = orjson.dumps([rec.body for rec in fake.requests]).decode()
    for name in ("image.png", "video.mp4", "anthropic.png", "responses.png"):
        assert f"{url}/{name}" in sent, f"{name} was not forwarded upstream as sent"
    assert connections(sock) == 0, "the gateway connected to a URL a client sent"

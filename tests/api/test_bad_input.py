"""Client input that used to end in a 500 (issue 16 §6): objects nested deeper than the JSON
encoder can forward, and integers beyond 64 bits. Each is a 400 in the caller's protocol
naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Gateway


def deep(n: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(n):
        node = {"type": "object", "properties": {"a": node}}
    return node


def post(gateway: Gateway, key: str, protocol: str, body: dict[str, Any]) -> httpx.Response:
    if protocol == "openai":
        return httpx.post(f"{gateway.openai_base}/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
    return httpx.post(f"{gateway.openai_base}/messages", json={"max_tokens": 16, **body}, timeout=30,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


def message(protocol: str, r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if protocol == "anthropic":
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error"
    return str(err["message"])


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_tool_schema_nested_too_deeply_is_a_400_naming_it(gateway: Gateway, key: str, protocol: str) -> None:
    tool = ({"type": "function", "function": {"name": "f", "parameters": deep(150)}} if protocol == "openai"
            else {"name": "f", "input_schema": deep(150)})
    r = post(gateway, key, protocol, {"model": "step-3.5-flash", "messages": MSG, "tools": [tool]})
    text = message(protocol, r)
    assert "nested more than" in text and "tools[0]" in text


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_tool_call_input_nested_too_deeply_is_a_400(gateway: Gateway, key: str, protocol: str) -> None:
    if protocol == "openai":
        msgs = [*MSG, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "x", "extra": deep(150)}]}]
    else:
        msgs = [*MSG, {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f",
                                                         "input": deep(150)}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}]}]
    text = message(protocol, post(gateway, key, protocol, {"model": "step-3.5-flash", "messages": msgs}))
    assert "nested more than" in text and "messages[" in text


@pytest.mark.parametrize(("protocol", "field", "value"), [
    ("openai", "seed", 18446744073709551616), ("openai", "seed", 1e30), ("openai", "max_tokens", 1e30),
    ("anthropic", "top_k", 1e30), ("anthropic", "max_tokens", 2**64),
])
def test_integers_beyond_64_bits_are_a_400_naming_the_field(gateway: Gateway, key: str, protocol: str, field: str,
                                                            value: Any) -> None:
    body = {"model": "step-3.5-flash", "messages": MSG, field: value}
    text = message(protocol, post(gateway, key, protocol, body))
    assert field in text and "64-bit" in text


def test_the_deepest_path_is_named() -> None:
    from stepplan.api.common import too_deep

    assert too_deep({"a": [{"b": 1}]}, 5) is None
    where = too_deep({"tools": [{"function": {"parameters": deep(10)}}]}, 8)
    assert where is not None and where.startswith("tools[0].function.parameters.properties.a")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://example.com/v.mp4"])
def test_video_urls_are_limited_to_http_and_data(gateway: Gateway, key: str, url: str) -> None:
    body = {"model": "step-3.7-flash", "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}]}
    text = message("openai", post(gateway, key, "openai", body))
    assert "video_url" in text and "http(s)" in text


def test_the_anthropic_401_names_its_code_once(gateway: Gateway) -> None:
    r = post(gateway, "sk-wrong", "anthropic", {"model": "step-3.5-flash", "messages": MSG})
    assert r.status_code == 401
    text = r.json()["error"]["message"]
    assert text.count("invalid_api_key") == 1, text


def test_a_client_that_leaves_mid_body_is_not_a_server_error(gateway: Gateway, key: str) -> None:
    import socket
    import time

    before = gateway.log_text().count("unhandled error")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"POST /step_plan/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + key.encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")
    # the gateway notices each disconnect; a following request is served normally
    deadline = time.monotonic() + 10
    r = post(gateway, key, "openai", {"model": "step-3.5-flash", "messages": MSG})
    while r.status_code != 200 and time.monotonic() < deadline:
        r = post(gateway, key, "openai", {"model": "step-3.5-flash", "messages": MSG})
    assert r.status_code == 200
    assert gateway.log_text().count("unhandled error") == before
    assert "ClientDisconnect" not in gateway.log_text()


def test_the_sqlite_database_is_readable_by_its_owner_only(gateway: Gateway, key: str) -> None:
    import stat

    for p in gateway.workdir.glob("stepplan.db*"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p

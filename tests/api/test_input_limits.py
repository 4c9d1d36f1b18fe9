"""Limits on what one body may hold (issue 16 §4): messages, tools, content parts and string length,
set in [server] and each a 400 in the caller's protocol naming the field and the limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream

LIMITS = "\nmax_messages = 3\nmax_tools = 2\nmax_content_parts = 2\nmax_string_chars = 100\n"
MODEL = "step-3.5-flash"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[tuple[Gateway, str]]:
    gw = make_gateway(tmp_path_factory.mktemp("limits"), fake)
    gw.config.write_text(gw.config.read_text().replace("[server]\n", "[server]" + LIMITS, 1))
    gw.start()
    yield gw, gw.new_key("limits")
    gw.stop()


def post(gw: Gateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.openai_base}/{path}", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"})


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def fn(i: int) -> dict[str, Any]:
    return {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}


CASES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    # name: (path, body, param, limit key)
    "chat messages": ("chat/completions", {"model": MODEL, "messages": [user()] * 4}, "messages", "max_messages"),
    "chat tools": ("chat/completions", {"model": MODEL, "messages": [user()], "tools": [fn(i) for i in range(3)]},
                   "tools", "max_tools"),
    "chat parts": ("chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}] * 3}]}, "messages[0].content",
                   "max_content_parts"),
    "chat string": ("chat/completions", {"model": MODEL, "messages": [user("x" * 101)]}, "messages[0].content",
                    "max_string_chars"),
    "chat stop": ("chat/completions", {"model": MODEL, "messages": [user()], "stop": ["a", "b", "c"]}, "stop",
                  "max_content_parts"),
    "messages messages": ("messages", {"model": MODEL, "max_tokens": 5, "messages": [user()] * 4}, "messages",
                          "max_messages"),
    "messages tools": ("messages", {"model": MODEL, "max_tokens": 5, "messages": [user()], "tools": [
        {"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(3)]}, "tools", "max_tools"),
    "messages parts": ("messages", {"model": MODEL, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}] * 3}]}, "messages[0].content",
                       "max_content_parts"),
    "messages string": ("messages", {"model": MODEL, "max_tokens": 5, "system": "s" * 101, "messages": [user()]},
                        "system", "max_string_chars"),
    "responses input": ("responses", {"model": MODEL, "input": [user()] * 4}, "input", "max_messages"),
    "responses tools": ("responses", {"model": MODEL, "input": "hi", "tools": [
        {"type": "function", "name": f"f{i}"} for i in range(3)]}, "tools", "max_tools"),
    "responses namespace tools": ("responses", {"model": MODEL, "input": "hi", "tools": [
        {"type": "function", "name": "f"}, {"type": "namespace", "name": "ns", "tools": [
            {"type": "function", "name": "g"}, {"type": "function", "name": "h"}]}]}, "tools[1].tools[1]",
                                  "max_tools"),
    "responses string": ("responses", {"model": MODEL, "input": "y" * 101}, "input", "max_string_chars"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_limit_is_a_400_naming_the_field_and_the_setting(limited: tuple[Gateway, str], name: str) -> None:
    gw, key = limited
    path, body, param, setting = CASES[name]
    r = post(gw, key, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert f"[server] {setting}" in err["message"]
    if path == "messages":
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error" and param in err["message"]
    else:
        assert err["param"] == param, err


def test_at_the_limits_a_request_is_served(limited: tuple[Gateway, str]) -> None:
    gw, key = limited
    r = post(gw, key, "chat/completions", {"model": MODEL, "tools": [fn(0), fn(1)], "stop": ["a", "b"],
                                           "messages": [user("x" * 100), {"role": "user", "content": [
                                               {"type": "text", "text": "a"}] * 2}, user()]})
    assert r.status_code == 200, r.text


def test_the_document_shows_the_configured_limits(limited: tuple[Gateway, str]) -> None:
    doc = httpx.get(f"{limited[0].openai_base}/openapi.json", timeout=10).json()
    req = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert req["messages"]["maxItems"] == 3 and req["model"]["maxLength"] == 100


def test_limits_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    from stepplan.settings import ConfigError, load_settings

    (tmp_path / "c.toml").write_text("[server]" + LIMITS)
    s = load_settings(tmp_path / "c.toml", env={}).server
    assert (s.max_messages, s.max_tools, s.max_content_parts, s.max_string_chars) == (3, 2, 2, 100)
    (tmp_path / "bad.toml").write_text("[server]\nmax_tools = 0\n")
    with pytest.raises(ConfigError, match="max_tools"):
        load_settings(tmp_path / "bad.toml", env={})

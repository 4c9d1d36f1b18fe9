"""Golden tests: every captured Claude Code and OpenCode request (tests/golden/captures/) replayed
through the gateway to a fake upstream of each protocol, checking what the upstream received and
what the client got back.

Paths are mapped onto the gateway (``/v1/messages`` → ``/step_plan/v1/messages``), query strings
(``?beta=true``) and headers (``anthropic-beta``, ``x-app``, session ids, …) are sent as captured,
and the masked keys are replaced by a real one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.anthropic.wire import anthropic_stream, check_block_sequence, openai_tool_stream, parse_sse
from tests.conftest import Gateway
from tests.fakes.upstream import DEFAULT_TEXT, FakeUpstream

CAPTURES = Path(__file__).resolve().parent.parent / "golden" / "captures"
ALL = sorted(p.name for p in CAPTURES.glob("*.json"))
IMAGE_CAPTURES = {n for n in ALL if '"image_url"' in (CAPTURES / n).read_text()
                  or '"type": "image"' in (CAPTURES / n).read_text()}
DROP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
ANTHROPIC_FIELDS = {"model", "max_tokens", "messages", "system", "stream", "thinking", "output_config", "temperature",
                    "top_p", "top_k", "stop_sequences", "tools", "tool_choice"}
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop",
                 "tools", "tool_choice", "reasoning_effort", "parallel_tool_calls", "presence_penalty",
                 "frequency_penalty", "seed", "response_format"}
READ_ARGS = ['{"file_path":', ' "/tmp/ccwork/hello.txt"}']


def load(name: str) -> dict[str, Any]:
    return json.loads((CAPTURES / name).read_text())


def replay(gw: Gateway, key: str, cap: dict[str, Any], body: dict[str, Any] | None = None) -> httpx.Response:
    path = cap["path"]
    if path.startswith("/v1/"):
        path = "/step_plan" + path
    headers = {k: v for k, v in cap["headers"].items() if k.lower() not in DROP_HEADERS}
    for k in list(headers):
        if k.lower() == "x-api-key":
            headers[k] = key
        elif k.lower() == "authorization":
            headers[k] = f"Bearer {key}"
    url = gw.url + path + (f"?{cap['query']}" if cap.get("query") else "")
    payload = body if body is not None else cap.get("body")
    content = json.dumps(payload).encode() if payload is not None else None
    return httpx.request(cap["method"], url, headers=headers, content=content, timeout=60)


def on(upstream: str, gateway: Gateway, key: str, agw: Gateway, akey: str) -> tuple[Gateway, str]:
    return (gateway, key) if upstream == "openai" else (agw, akey)


def client_text(cap: dict[str, Any], r: httpx.Response) -> str:
    """The text a client assembled from the gateway's answer (either protocol, streamed or not)."""
    anthropic_client = "/messages" in cap["path"]
    if not cap["body"].get("stream"):
        b = r.json()
        if anthropic_client:
            return "".join(x.get("text", "") for x in b["content"])
        return b["choices"][0]["message"]["content"] or ""
    if anthropic_client:
        events = parse_sse(r.text)
        check_block_sequence(events)
        return "".join(d["delta"].get("text", "") for e, d in events if e == "content_block_delta")
    assert r.text.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def vision(cap: dict[str, Any]) -> dict[str, Any]:
    return {**cap["body"], "model": "step-3.7-flash"}


# ============================================================================ every capture, both upstreams
@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
@pytest.mark.parametrize("name", ALL)
def test_capture_replays(name: str, upstream: str, gateway: Gateway, key: str, agw: Gateway, akey: str,
                         fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    cap = load(name)
    r = replay(gw, k, cap)
    if cap["method"] == "HEAD":
        assert r.status_code == 200
        return
    anthropic_client = "/messages" in cap["path"]
    if name in IMAGE_CAPTURES:  # step-3.5-flash is text-only: a clear error in the client's protocol
        assert r.status_code == 400
        err = r.json()["error"]
        assert "unsupported_content_type" in (err["message"] if anthropic_client else err["type"])
        assert (r.json().get("type") == "error") is anthropic_client
        assert fake.requests == []
        return
    assert r.status_code == 200, r.text
    if cap["path"].endswith("/count_tokens"):
        assert r.json()["input_tokens"] > 0 and fake.requests == []
        return
    assert client_text(cap, r) == DEFAULT_TEXT
    assert len(fake.requests) == 1
    sent = fake.last
    if upstream == "openai":
        assert sent.path == "/v1/chat/completions" and set(sent.body) <= OPENAI_FIELDS, set(sent.body)
    else:
        assert sent.path == "/v1/messages" and set(sent.body) <= ANTHROPIC_FIELDS, set(sent.body)
        assert not any(h.lower() == "anthropic-beta" for h in sent.headers)
    assert sent.body["model"] == "step-3.5-flash"
    if cap["body"].get("stream"):
        assert sent.body["stream"] is True


# ============================================================================ Claude Code specifics
@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_claude_code_say_hi_system_prompt_tools_and_trailing_system(upstream: str, gateway: Gateway, key: str,
                                                                    agw: Gateway, akey: str,
                                                                    fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    cap = load("claude-code-apikey-002.json")
    assert replay(gw, k, cap).status_code == 200
    b = fake.last.body
    names = [t["name"] for t in cap["body"]["tools"]]
    if upstream == "openai":
        msgs = b["messages"]
        assert msgs[0]["role"] == "system" and "x-anthropic-billing-header" not in msgs[0]["content"]
        assert msgs[0]["content"].startswith("You are a Claude agent")
        assert [m["role"] for m in msgs] == ["system", "user"]
        last = as_text(msgs[-1]["content"])
        assert "say hi" in last
        assert last.rstrip().endswith("</system-reminder>") and "Available agent types" in last
        assert [t["function"]["name"] for t in b["tools"]] == names
        assert b["tools"][0]["function"]["parameters"] == cap["body"]["tools"][0]["input_schema"]
        assert "thinking" not in b and "reasoning_effort" not in b  # step-3.5-flash takes no effort
    else:
        assert b["system"][0]["text"].startswith("You are a Claude agent")
        assert b["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert [m["role"] for m in b["messages"]] == ["user"]
        last = b["messages"][-1]["content"][-1]["text"]
        assert last.startswith("<system-reminder>") and "Available agent types" in last
        assert [t["name"] for t in b["tools"]] == names
        assert b["thinking"] == {"type": "adaptive"} and "output_config" not in b
        assert b["max_tokens"] == 32000


@pytest.mark.parametrize("as_captured", [False, True], ids=["our-signature", "foreign-signature"])
@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_claude_code_tool_round_trip(upstream: str, as_captured: bool, gateway: Gateway, key: str, agw: Gateway,
                                     akey: str, fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    # Turn 1: the model thinks and asks for the Read tool, arguments streamed in two pieces.
    if upstream == "openai":
        fake.queue_sse(openai_tool_stream([("toolu_0002", "Read", READ_ARGS)], reasoning="Let me think briefly."))
    else:
        fake.queue_sse(anthropic_stream(thinking="Let me think briefly.", signature="ds-sig-cc",
                                        tools=[("toolu_0002", "Read", READ_ARGS)]))
    r = replay(gw, k, load("claude-code-tool-text-002.json"))
    events = parse_sse(r.text)
    check_block_sequence(events)
    starts = [d["content_block"]["type"] for e, d in events if e == "content_block_start"]
    assert starts == ["thinking", "tool_use"]
    assert [d["delta"]["partial_json"] for e, d in events if e == "content_block_delta"
            and d["delta"]["type"] == "input_json_delta"] == READ_ARGS
    signature = next(d["delta"]["signature"] for e, d in events if e == "content_block_delta"
                     and d["delta"]["type"] == "signature_delta")
    assert next(d for e, d in events if e == "message_delta")["delta"]["stop_reason"] == "tool_use"

    # Turn 2: Claude Code sends the tool result and echoes the thinking block.
    cap = load("claude-code-tool-text-003.json")
    body = json.loads(json.dumps(cap["body"]))
    if not as_captured:
        body["messages"][2]["content"][0]["signature"] = signature
    r = replay(gw, k, cap, body)
    assert r.status_code == 200 and client_text(cap, r) == DEFAULT_TEXT
    b = fake.last.body
    if upstream == "openai":
        roles = [m["role"] for m in b["messages"]]
        assert roles == ["system", "user", "assistant", "tool"]
        assert "Available agent types" in as_text(b["messages"][1]["content"])  # mid-list system, before the call
        asst = b["messages"][2]
        assert asst["reasoning_content"] == "Let me think briefly."
        assert asst["tool_calls"] == [{"id": "toolu_0002", "type": "function", "function": {
            "name": "Read", "arguments": '{"file_path":"/tmp/ccwork/hello.txt"}'}}]
        assert b["messages"][3] == {"role": "tool", "tool_call_id": "toolu_0002", "content": "1\thello from file\n2\t"}
    else:
        assert [m["role"] for m in b["messages"]] == ["user", "assistant", "user"]
        assert b["messages"][1]["content"] == [
            {"type": "thinking", "thinking": "Let me think briefly.", "signature": "ds-sig-cc"},
            {"type": "tool_use", "id": "toolu_0002", "name": "Read", "input": {"file_path": "/tmp/ccwork/hello.txt"}}]
        # Claude Code's moving prompt-cache breakpoint on the latest tool result reaches the upstream.
        assert b["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "toolu_0002", "content": "1\thello from file\n2\t",
             "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_claude_code_image_tool_result_is_carried(upstream: str, gateway: Gateway, key: str, agw: Gateway,
                                                  akey: str, fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    cap = load("claude-code-tool-image-003.json")
    data = cap["body"]["messages"][3]["content"][0]["content"][0]["source"]["data"]
    r = replay(gw, k, cap, vision(cap))
    assert r.status_code == 200 and client_text(cap, r) == DEFAULT_TEXT
    msgs = fake.last.body["messages"]
    if upstream == "openai":
        assert msgs[3]["role"] == "tool" and msgs[3]["tool_call_id"] == "toolu_0002"
        assert msgs[4]["role"] == "user"
        assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}} in msgs[4]["content"]
    else:
        result = msgs[-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_0002"
        assert result["content"] == [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": data}}]


def test_claude_code_count_tokens_calls(gateway: Gateway, key: str) -> None:
    counts = {}
    for name in (n for n in ALL if n.startswith("claude-code-interactive") and "count_tokens" in load(n)["path"]):
        cap = load(name)
        r = replay(gateway, key, cap)
        assert r.status_code == 200 and set(r.json()) == {"input_tokens"}
        counts[name] = r.json()["input_tokens"]
        if cap["body"]["tools"]:
            bare = replay(gateway, key, cap, {**cap["body"], "tools": []}).json()["input_tokens"]
            assert counts[name] > bare + 20 * len(cap["body"]["tools"])  # tools are counted, not ignored
    assert len(counts) == 13
    big = load("claude-code-interactive-014.json")  # 18 tools
    assert counts["claude-code-interactive-014.json"] > 3000, big["body"]["tools"][0]["name"]


# ============================================================================ OpenCode specifics
@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_opencode_tool_round_trip_replays_reasoning(upstream: str, gateway: Gateway, key: str, agw: Gateway,
                                                    akey: str, fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    args = ['{"filePath":', '"/tmp/ocwork/hello.txt"}']
    if upstream == "openai":
        fake.queue_sse(openai_tool_stream([("call_0002", "read", args)], reasoning="Let me think briefly."))
    else:
        fake.queue_sse(anthropic_stream(thinking="Let me think briefly.", signature="ds-sig-oc",
                                        tools=[("call_0002", "read", args)]))
    r = replay(gw, k, load("opencode-tool-text-002.json"))
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    frags = [tc["function"]["arguments"] for c in chunks if c["choices"]
             for tc in c["choices"][0]["delta"].get("tool_calls") or [] if tc["function"].get("arguments")]
    assert reasoning == "Let me think briefly." and "".join(frags) == "".join(args)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0  # include_usage honoured

    cap = load("opencode-tool-text-003.json")
    r = replay(gw, k, cap)
    assert r.status_code == 200 and client_text(cap, r) == DEFAULT_TEXT
    b = fake.last.body
    if upstream == "openai":
        asst = b["messages"][2]
        assert asst["reasoning_content"] == "Let me think briefly." and asst["tool_calls"][0]["id"] == "call_0002"
        assert b["messages"][3]["role"] == "tool"
    else:
        asst = b["messages"][1]["content"]
        assert asst[0] == {"type": "thinking", "thinking": "Let me think briefly.", "signature": "ds-sig-oc"}
        assert asst[1] == {"type": "tool_use", "id": "call_0002", "name": "read",
                           "input": {"filePath": "/tmp/ocwork/hello.txt"}}
        assert b["messages"][2]["content"][0]["type"] == "tool_result"
        assert b["system"].startswith("You are opencode")


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
@pytest.mark.parametrize("name", ["opencode-tool-image-003.json", "opencode-attach-image-002.json"])
def test_opencode_images_are_carried(name: str, upstream: str, gateway: Gateway, key: str, agw: Gateway, akey: str,
                                     fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    cap = load(name)
    r = replay(gw, k, cap, vision(cap))
    assert r.status_code == 200 and client_text(cap, r) == DEFAULT_TEXT
    sent = json.dumps(fake.last.body)
    data = next(p["image_url"]["url"] for m in cap["body"]["messages"] if isinstance(m["content"], list)
                for p in m["content"] if p["type"] == "image_url").split(",", 1)[1]
    assert data in sent
    if upstream == "anthropic":
        images = [p for m in fake.last.body["messages"] for p in m["content"] if p["type"] == "image"]
        assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_opencode_anthropic_provider_round_trip(upstream: str, gateway: Gateway, key: str, agw: Gateway, akey: str,
                                                fake: FakeUpstream) -> None:
    gw, k = on(upstream, gateway, key, agw, akey)
    cap = load("opencode-anthropic-tool-text-003.json")
    r = replay(gw, k, cap)
    assert r.status_code == 200 and client_text(cap, r) == DEFAULT_TEXT
    b = fake.last.body
    if upstream == "openai":
        assert [m["role"] for m in b["messages"]] == ["system", "user", "assistant", "tool"]
        assert b["tool_choice"] == "auto" and len(b["tools"]) == 10
    else:
        assert b["tool_choice"] == {"type": "auto"} and len(b["tools"]) == 10
        assert b["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert b["messages"][2]["content"][0]["tool_use_id"] == "toolu_0002"

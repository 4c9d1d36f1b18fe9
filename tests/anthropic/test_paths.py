"""The four translation paths, each streamed and not, with text, reasoning and a tool call:

    OpenAI client    → OpenAI upstream        (gateway,  openai SDK)
    OpenAI client    → Anthropic upstream     (agw,      openai SDK)
    Anthropic client → OpenAI upstream        (gateway,  anthropic SDK)
    Anthropic client → Anthropic upstream     (agw,      anthropic SDK)

and reasoning replay across turns (DeepSeek thinking mode: every earlier assistant turn that
made tool calls must carry its reasoning back, or the upstream answers 400)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from stepplan.reasoning import SIG_PREFIX
from tests.anthropic.wire import anthropic_stream, openai_tool_stream
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, anthropic_message, openai_completion

READ_OAI = {"type": "function", "function": {"name": "Read", "description": "Read a file", "parameters": {
    "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}}
READ_ANT = {"name": "Read", "description": "Read a file",
            "input_schema": READ_OAI["function"]["parameters"]}  # type: ignore[index]
ARGS = ['{"file_', 'path": "notes.txt"}']
USAGE_OAI = {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
             "prompt_tokens_details": {"cached_tokens": 1000}}
USAGE_ANT_IN = {"input_tokens": 200, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0,
                "output_tokens": 1}


def queue_openai(fake: FakeUpstream, stream: bool, call_id: str, reasoning: str = "Need the file.") -> None:
    if stream:
        fake.queue_sse(openai_tool_stream([(call_id, "Read", ARGS)], reasoning=reasoning, text="Reading.",
                                          usage=USAGE_OAI))
    else:
        fake.queue_json(openai_completion("Reading.", reasoning=reasoning, usage=USAGE_OAI, tool_calls=[
            {"id": call_id, "type": "function", "function": {"name": "Read", "arguments": "".join(ARGS)}}]))


def queue_anthropic(fake: FakeUpstream, stream: bool, call_id: str, reasoning: str = "Need the file.",
                    signature: str = "ds-sig-1") -> None:
    if stream:
        fake.queue_sse(anthropic_stream(thinking=reasoning, signature=signature, text="Reading.",
                                        tools=[(call_id, "Read", ARGS)], usage_in=USAGE_ANT_IN,
                                        usage_out={"output_tokens": 30}))
    else:
        msg = anthropic_message("Reading.", thinking=reasoning, usage={**USAGE_ANT_IN, "output_tokens": 30},
                                tool_uses=[{"id": call_id, "name": "Read", "input": {"file_path": "notes.txt"}}])
        msg["content"][0]["signature"] = signature
        fake.queue_json(msg)


def openai_call(c: openai.OpenAI, stream: bool, **kw: Any) -> dict[str, Any]:
    """One chat call; returns the assembled message, finish reason and usage (streamed or not)."""
    kw.setdefault("model", "step-3.7-flash")
    kw.setdefault("tools", [READ_OAI])
    if not stream:
        r = c.chat.completions.create(**kw)
        m = r.choices[0].message
        extra = m.model_extra or {}
        return {"content": m.content, "reasoning": extra.get("reasoning_content"),
                "calls": [(t.id, t.function.name, t.function.arguments) for t in m.tool_calls or []],
                "finish": r.choices[0].finish_reason, "usage": r.usage, "arg_pieces": None}
    content, reasoning, calls, pieces, finish, usage = "", "", {}, [], None, None
    for ch in c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage is not None:
            usage = ch.usage
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        content += d.content or ""
        reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, ["", "", ""])
            slot[0] = tc.id or slot[0]
            slot[1] = (tc.function.name if tc.function and tc.function.name else None) or slot[1]
            frag = tc.function.arguments if tc.function else None
            if frag:
                slot[2] += frag
                pieces.append(frag)
        finish = ch.choices[0].finish_reason or finish
    return {"content": content, "reasoning": reasoning, "calls": [tuple(v) for _, v in sorted(calls.items())],
            "finish": finish, "usage": usage, "arg_pieces": pieces}


def anthropic_call(c: anthropic.Anthropic, stream: bool, **kw: Any) -> Any:
    kw.setdefault("model", "step-3.7-flash")
    kw.setdefault("max_tokens", 1000)
    kw.setdefault("tools", [READ_ANT])
    if not stream:
        return c.messages.create(**kw)
    with c.messages.stream(**kw) as s:
        return s.get_final_message()


# ============================================================================ the four paths
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_client_to_openai_upstream(gateway: Gateway, key: str, fake: FakeUpstream, stream: bool) -> None:
    c = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    queue_openai(fake, stream, f"call_oo_{stream}")
    r = openai_call(c, stream, messages=[{"role": "user", "content": "read notes"}], reasoning_effort="high")
    assert r["content"] == "Reading." and r["reasoning"] == "Need the file."
    assert r["calls"] == [(f"call_oo_{stream}", "Read", "".join(ARGS))] and r["finish"] == "tool_calls"
    assert r["usage"].prompt_tokens == 1200 and r["usage"].prompt_tokens_details.cached_tokens == 1000
    sent = fake.last
    assert sent.path == "/v1/chat/completions" and sent.body["reasoning_effort"] == "high"
    assert sent.body["tools"] == [READ_OAI]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_client_to_anthropic_upstream(agw: Gateway, akey: str, fake: FakeUpstream, stream: bool) -> None:
    c = openai.OpenAI(base_url=agw.openai_base, api_key=akey, max_retries=0)
    queue_anthropic(fake, stream, f"toolu_oa_{stream}")
    r = openai_call(c, stream, reasoning_effort="high", messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "read notes"}])
    assert r["content"] == "Reading." and r["reasoning"] == "Need the file."
    assert r["calls"] == [(f"toolu_oa_{stream}", "Read", '{"file_path":"notes.txt"}' if not stream
                           else "".join(ARGS))]
    if stream:
        assert r["arg_pieces"] == ARGS  # fragments pass through as they arrive
    assert r["finish"] == "tool_calls"
    # Anthropic input_tokens excludes the cache; OpenAI prompt_tokens includes it.
    assert r["usage"].prompt_tokens == 1200 and r["usage"].prompt_tokens_details.cached_tokens == 1000
    assert r["usage"].completion_tokens == 30
    sent = fake.last
    assert sent.path == "/v1/messages"
    b = sent.body
    assert b["system"] == "You are terse." and b["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "read notes"}]}]
    assert b["max_tokens"] == 250_000  # OpenAI clients may omit it; Anthropic requires it
    assert b["tools"] == [{"name": "Read", "description": "Read a file", "input_schema": READ_ANT["input_schema"]}]
    assert b["output_config"] == {"effort": "high"} and "reasoning_effort" not in b
    assert b.get("stream") is (True if stream else None)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_client_to_openai_upstream(client: anthropic.Anthropic, fake: FakeUpstream, stream: bool) -> None:
    queue_openai(fake, stream, f"call_ao_{stream}")
    m = anthropic_call(client, stream, system="You are terse.", messages=[{"role": "user", "content": "read notes"}],
                       thinking={"type": "adaptive"}, output_config={"effort": "high"})
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
    assert m.content[0].thinking == "Need the file." and m.content[0].signature.startswith(SIG_PREFIX)
    assert m.content[1].text == "Reading."
    assert (m.content[2].id, m.content[2].input) == (f"call_ao_{stream}", {"file_path": "notes.txt"})
    assert m.stop_reason == "tool_use"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (200, 1000, 30)
    b = fake.last.body
    assert b["messages"][0] == {"role": "system", "content": "You are terse."}
    assert b["reasoning_effort"] == "high" and "output_config" not in b and "thinking" not in b


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_client_to_anthropic_upstream(aclient: anthropic.Anthropic, fake: FakeUpstream,
                                                stream: bool) -> None:
    queue_anthropic(fake, stream, f"toolu_aa_{stream}")
    m = anthropic_call(aclient, stream, max_tokens=4000, messages=[{"role": "user", "content": "read notes"}],
                       thinking={"type": "enabled", "budget_tokens": 2000}, output_config={"effort": "medium"},
                       system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
                       extra_body={"context_management": {"edits": []}, "service_tier": "auto"},
                       extra_headers={"anthropic-beta": "context-management-2025-06-27"})
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
    assert m.content[0].thinking == "Need the file." and m.content[0].signature.startswith(SIG_PREFIX)
    assert (m.content[2].id, m.content[2].input) == (f"toolu_aa_{stream}", {"file_path": "notes.txt"})
    assert m.stop_reason == "tool_use"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (200, 1000, 30)
    sent = fake.last
    assert "anthropic-beta" not in {k.lower() for k in sent.headers}
    b = sent.body
    assert b["system"] == [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    assert b["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert b["output_config"] == {"effort": "medium"}
    assert not {"context_management", "service_tier", "metadata"} & set(b)


# ============================================================================ reasoning replay
def _assert_deepseek_would_accept(body: dict[str, Any]) -> None:
    """DeepSeek thinking mode: each earlier assistant turn with tool calls carries reasoning_content."""
    for m in body["messages"]:
        if m["role"] == "assistant" and m.get("tool_calls"):
            assert m.get("reasoning_content"), f"reasoning_content must be passed back: {m}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("echo_thinking", [True, False], ids=["echoed", "dropped"])
def test_deepseek_multi_turn_tool_use_never_loses_reasoning(client: anthropic.Anthropic, fake: FakeUpstream,
                                                            stream: bool, echo_thinking: bool) -> None:
    tag = f"{stream}_{echo_thinking}"
    history: list[dict[str, Any]] = [{"role": "user", "content": "read two files"}]
    for turn in range(3):
        queue_openai(fake, stream, f"call_ds{turn}_{tag}", reasoning=f"reasoning of turn {turn}")
        m = anthropic_call(client, stream, model="step-3.5-flash", messages=history,
                           thinking={"type": "adaptive"})
        _assert_deepseek_would_accept(fake.last.body)
        blocks = [b.model_dump(exclude_none=True) for b in m.content]
        if not echo_thinking:  # a client that drops thinking: the gateway's record restores it
            blocks = [b for b in blocks if b["type"] != "thinking"]
        history += [{"role": "assistant", "content": blocks},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": m.content[-1].id,
                                                  "content": f"file {turn}"}]}]
    sent = [m for m in fake.last.body["messages"] if m["role"] == "assistant"]
    assert [m["reasoning_content"] for m in sent] == ["reasoning of turn 0", "reasoning of turn 1"]


@pytest.mark.parametrize("echo_reasoning", [True, False], ids=["echoed", "dropped"])
def test_openai_client_reasoning_goes_back_to_anthropic_upstream_with_its_signature(
        oclient: openai.OpenAI, fake: FakeUpstream, echo_reasoning: bool) -> None:
    call_id = f"toolu_sig_{echo_reasoning}"
    queue_anthropic(fake, True, call_id, reasoning=f"why {echo_reasoning}", signature=f"ds-{echo_reasoning}")
    r = openai_call(oclient, True, messages=[{"role": "user", "content": "read"}])
    assistant: dict[str, Any] = {"role": "assistant", "content": r["content"], "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in r["calls"]]}
    if echo_reasoning:
        assistant["reasoning_content"] = r["reasoning"]
    openai_call(oclient, False, messages=[{"role": "user", "content": "read"}, assistant,
                                          {"role": "tool", "tool_call_id": call_id, "content": "data"}])
    sent = fake.last.body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": f"why {echo_reasoning}", "signature": f"ds-{echo_reasoning}"}
    assert sent[-1]["type"] == "tool_use" and sent[-1]["id"] == call_id
    assert fake.last.body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call_id,
                                                           "content": "data"}

"""Prompt-cache breakpoints (``cache_control``) reach an Anthropic-protocol upstream on every
block type that takes one, within Anthropic's limit of 4 per request (the oldest extra ones go,
never the last), and ``is_error`` is kept as the client sent it.

The tool-loop tests run a 10-turn agent loop against the fake upstream with prompt caching on
(tests/fakes/prompt_cache.py) and check that each turn reads from the cache exactly what the
client's breakpoints allow."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import anthropic
import openai
import orjson
import pytest

from stepplan.protocols.anthropic_request import decode_request, encode_request
from stepplan.reasoning import Signer
from tests.anthropic.wire import anthropic_stream
from tests.fakes.prompt_cache import (
    MAX_BREAKPOINTS,
    PromptCache,
    prefixes,
    tokens_through,
    tokens_to_last_breakpoint,
)
from tests.fakes.upstream import FakeUpstream, anthropic_message

SIGNER = Signer(b"k" * 32)
EPH = {"type": "ephemeral"}
EPH_1H = {"type": "ephemeral", "ttl": "1h"}
READ = {"name": "Read", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}
SYSTEM = "You are a careful coding agent. " * 60  # a long, stable system prompt


def encode(**body: Any) -> dict[str, Any]:
    wire = {"model": "m", "max_tokens": 100, **body}
    return encode_request(decode_request(wire, SIGNER), "m", stream=False, default_max_tokens=100)


def marks(body: dict[str, Any]) -> list[Any]:
    """Where the cache_control marks of an upstream body sit, in prompt order."""
    out: list[Any] = [("tool", t["name"], t["cache_control"]) for t in body.get("tools", ()) if "cache_control" in t]
    if isinstance(body.get("system"), list):
        out += [("system", b["text"], b["cache_control"]) for b in body["system"] if "cache_control" in b]
    for m in body["messages"]:
        for b in m["content"]:
            for x in b.get("content") if isinstance(b.get("content"), list) else ():
                if "cache_control" in x:
                    out.append((x["type"], x.get("text"), x["cache_control"]))
            if "cache_control" in b:
                out.append((b["type"], b.get("text") or b.get("id") or b.get("tool_use_id"), b["cache_control"]))
    return out


# ============================================================================ the encoder
def test_cache_control_is_kept_on_every_block_type_with_its_ttl() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    out = encode(
        tools=[{**READ, "cache_control": EPH_1H}],
        system=[{"type": "text", "text": "S", "cache_control": EPH_1H}],
        messages=[
            {"role": "user", "content": [
                {"type": "image", "source": png, "cache_control": EPH},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "D"},
                 "cache_control": EPH}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {},
                                               "cache_control": EPH}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "R",
                                          "is_error": False, "cache_control": EPH}]}])
    # Six marks: the two oldest (tools, system) go, Anthropic takes four; a text document is sent as text.
    assert marks(out) == [("image", None, EPH), ("text", "D", EPH), ("tool_use", "t1", EPH),
                          ("tool_result", "t1", EPH)]
    assert out["messages"][-1]["content"][0]["is_error"] is False
    out = encode(
        tools=[{**READ, "cache_control": EPH_1H}],
        system=[{"type": "text", "text": "S", "cache_control": EPH_1H}],
        messages=[{"role": "user", "content": [{"type": "image", "source": png, "cache_control": EPH},
                                               {"type": "text", "text": "q", "cache_control": EPH}]}])
    assert marks(out) == [("tool", "Read", EPH_1H), ("system", "S", EPH_1H), ("image", None, EPH), ("text", "q", EPH)]
    assert out["messages"][0]["content"][0] == {"type": "image", "source": png, "cache_control": EPH}


def test_tool_result_marks_inner_blocks_and_is_error_are_kept() -> None:
    out = encode(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "Read", "input": {}},
                                          {"type": "tool_use", "id": "b", "name": "Read", "input": {}},
                                          {"type": "tool_use", "id": "c", "name": "Read", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": "ok", "is_error": False},
            {"type": "tool_result", "tool_use_id": "b", "content": "boom", "is_error": True},
            {"type": "tool_result", "tool_use_id": "c", "content": [
                {"type": "text", "text": "part 1"}, {"type": "text", "text": "part 2", "cache_control": EPH}]}]}])
    a, b, c = out["messages"][2]["content"]
    assert a == {"type": "tool_result", "tool_use_id": "a", "content": "ok", "is_error": False}
    assert b == {"type": "tool_result", "tool_use_id": "b", "content": "boom", "is_error": True}
    # An inner mark keeps the result's blocks as a list (a joined string would lose it); no is_error sent: none kept.
    assert c == {"type": "tool_result", "tool_use_id": "c", "content": [
        {"type": "text", "text": "part 1"}, {"type": "text", "text": "part 2", "cache_control": EPH}]}


@pytest.mark.parametrize("n", [1, 4, 5, 12])
def test_at_most_four_breakpoints_the_oldest_extra_ones_go(n: int) -> None:
    """A client that marks every tool result (and the system prompt): the latest marks stay."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for i in range(n - 1):
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "Read",
                                                        "input": {}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": f"r{i}",
                                                   "cache_control": EPH}]}]
    out = encode(system=[{"type": "text", "text": "S", "cache_control": EPH}], messages=messages)
    sent = [("system", "S", EPH)] + [("tool_result", f"t{i}", EPH) for i in range(n - 1)]
    assert marks(out) == sent[-MAX_BREAKPOINTS:]
    assert marks(out)[-1] == sent[-1]  # never the last


# ============================================================================ the 10-turn tool loop
def _tool_reply(fake: FakeUpstream, stream: bool, call_id: str) -> None:
    args = orjson.dumps({"file_path": f"{call_id}.txt"}).decode()
    if stream:
        fake.queue_sse(anthropic_stream(tools=[(call_id, "Read", [args])]))
    else:
        fake.queue_json(anthropic_message("", tool_uses=[{"id": call_id, "name": "Read",
                                                          "input": orjson.loads(args)}]))


def _result(call_id: str, marked: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "is_error": False,
                         "content": f"contents of {call_id}: " + "lorem ipsum dolor sit amet " * 40}
    if marked:
        r["cache_control"] = EPH
    return r


def _client_last_mark(style: str, turn: int) -> Callable[[dict[str, Any]], bool]:
    """The segment of an upstream prompt that the client's last breakpoint of that turn marked:
    the latest tool result (its call was made on the turn before), else the system prompt."""
    if style == "system-only" or turn == 0:
        return lambda seg: seg.get("type") == "text" and seg.get("text") == SYSTEM
    return lambda seg: seg.get("type") == "tool_result" and seg["tool_use_id"].endswith(f"_{turn - 1}")


def _create(c: anthropic.Anthropic, stream: bool, **kw: Any) -> Any:
    if not stream:
        return c.messages.create(**kw)
    with c.messages.stream(**kw) as s:
        return s.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("style", ["moving", "every", "system-only"])
def test_ten_turn_tool_loop_reads_what_the_breakpoints_allow(aclient: anthropic.Anthropic, fake: FakeUpstream,
                                                             stream: bool, style: str) -> None:
    """``moving``: Claude Code's breakpoint on the latest tool result only; ``every``: each tool
    result keeps its mark (more than 4 by turn 4: the gateway drops the oldest); ``system-only``:
    the control, where only the system prompt can ever be read from the cache."""
    fake.prompt_cache = PromptCache()
    tag = f"{style}_{stream}"
    history: list[dict[str, Any]] = [{"role": "user", "content": "read the ten files"}]
    sent: list[dict[str, Any]] = []
    for turn in range(10):
        call_id = f"toolu_{tag}_{turn}"
        _tool_reply(fake, stream, call_id)
        m = _create(aclient, stream, model="step-3.7-flash", max_tokens=1000, tools=[READ], messages=history,
                    system=[{"type": "text", "text": SYSTEM, "cache_control": EPH}])
        body = fake.last.body
        sent.append(body)
        ps = prefixes(body)
        # What the client's breakpoints allow: the previous request's prompt up to the block the
        # client marked last there (this request repeats it and goes on); nothing on the first turn.
        allowed = tokens_through(sent[-2], _client_last_mark(style, turn - 1)) if turn else 0
        u = m.usage
        assert u.cache_read_input_tokens == allowed, (turn, u)
        assert u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens == ps[-1].tokens
        assert len(marks(body)) <= MAX_BREAKPOINTS
        assert m.content[-1].type == "tool_use" and m.content[-1].id == call_id
        if style != "system-only" and turn:
            assert marks(body)[-1][:2] == ("tool_result", f"toolu_{tag}_{turn - 1}")  # the moving one reached it
            assert body["messages"][-1]["content"][0]["is_error"] is False
        history.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]})
        if style == "moving":
            for msg in history:  # Claude Code moves its breakpoint: only the newest result keeps one
                for b in msg["content"] if isinstance(msg["content"], list) else ():
                    b.pop("cache_control", None)
        history.append({"role": "user", "content": [_result(call_id, marked=style != "system-only")]})
    system_only = tokens_to_last_breakpoint({"system": sent[0]["system"], "tools": sent[0]["tools"], "messages": []})
    reads = [tokens_to_last_breakpoint(b) for b in sent[:-1]]
    if style == "system-only":
        assert set(reads) == {system_only}
    else:
        assert all(a < b for a, b in pairwise(reads)) and reads[-1] > 5 * system_only


def test_openai_client_breakpoints_reach_an_anthropic_upstream(oclient: openai.OpenAI, fake: FakeUpstream) -> None:
    """OpenRouter-style ``cache_control`` on OpenAI content parts and LiteLLM-style on tool messages."""
    fake.prompt_cache = PromptCache()
    history: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": EPH}]},
        {"role": "user", "content": "read the files"}]
    sent: list[dict[str, Any]] = []
    for turn in range(3):
        call_id = f"toolu_oai_{turn}"
        _tool_reply(fake, False, call_id)
        r = oclient.chat.completions.create(model="step-3.7-flash", messages=history,  # type: ignore[arg-type]
                                            tools=[{"type": "function", "function": {
                                                "name": "Read", "parameters": READ["input_schema"]}}])
        sent.append(fake.last.body)
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        allowed = 0
        if turn:  # the client's last mark on the turn before: its latest tool result, else the system prompt
            prev = f"toolu_oai_{turn - 2}"
            allowed = tokens_through(sent[-2], (lambda seg, p=prev: seg.get("tool_use_id") == p) if turn > 1
                                     else (lambda seg: seg.get("text") == SYSTEM))
        assert r.usage.prompt_tokens_details.cached_tokens == allowed
        msg = r.choices[0].message
        assert msg.tool_calls and msg.tool_calls[0].id == call_id
        for h in history:
            h.pop("cache_control", None)
        history += [msg.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call_id, "content": f"contents {turn} " * 50,
                     "cache_control": EPH}]
    assert marks(sent[-1]) == [("system", SYSTEM, EPH), ("tool_result", "toolu_oai_1", EPH)]


def test_openai_upstream_gets_no_cache_control_and_a_marked_error(client: anthropic.Anthropic,
                                                                  fake: FakeUpstream) -> None:
    client.messages.create(model="step-3.7-flash", max_tokens=100, tools=[READ],  # type: ignore[list-item]
                           system=[{"type": "text", "text": "S", "cache_control": EPH}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "go", "cache_control": EPH}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "Read", "input": {}},
                                          {"type": "tool_use", "id": "b", "name": "Read", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": "fine", "is_error": False, "cache_control": EPH},
            {"type": "tool_result", "tool_use_id": "b", "content": "boom", "is_error": True}]}])
    body = fake.last.body
    assert fake.last.path == "/v1/chat/completions" and b"cache_control" not in orjson.dumps(body)
    assert body["messages"][-2:] == [{"role": "tool", "tool_call_id": "a", "content": "fine"},
                                     {"role": "tool", "tool_call_id": "b", "content": "[tool error] boom"}]

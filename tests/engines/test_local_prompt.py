"""The embedded model's request rendering and stop handling (pure; no model needed)."""

from __future__ import annotations

import threading

import pytest

from stepplan.engines._llama import StopScanner, resolve_model_path
from stepplan.engines._local_prompt import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    chat_messages,
    keep_from,
    response_schema,
    tool_plan,
)
from stepplan.errors import InvalidRequest, UpstreamError
from stepplan.protocols.canonical import (
    Image,
    Message,
    Request,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    Video,
)
from stepplan.settings import UpstreamConfig

WEATHER = Tool("get_weather", "Current weather", {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                                 "type": "object", "properties": {"city": {"type": "string"}},
                                                 "required": ["city"]})
SEARCH = Tool("search", None, {"type": "object", "properties": {"q": {"type": "string"}}})


def test_messages_render_media_tools_and_drop_thinking() -> None:
    req = Request(
        model="step-3.7-flash",
        system=[Text("Be brief."), Text("Answer in English.")],
        messages=[
            Message("user", [Text("What is this?"), Image(url="https://x/cat.png"), Video(url="https://x/v.mp4")]),
            Message("assistant", [Thinking("let me look", signature="sig"), Text("Checking."),
                                  ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
            Message("user", [ToolResult("call_1", [Text("sunny"), Image(data="AAAA", media_type="image/png")])]),
            Message("assistant", [Thinking("only thoughts")]),
            Message("system", [Text("Reminder: be nice.")]),
            Message("user", [Text("Thanks")]),
        ],
    )
    head, turns = chat_messages(req, None)
    assert head == [{"role": "system", "content": "Be brief.\nAnswer in English."}]
    assert turns[0] == {"role": "user", "content": f"What is this?\n{IMAGE_PLACEHOLDER}\n{VIDEO_PLACEHOLDER}"}
    assert turns[1]["role"] == "assistant"
    assert "let me look" not in turns[1]["content"]
    assert turns[1]["content"] == 'Checking.\n[called tool get_weather with arguments {"city":"Paris"}]'
    assert turns[2] == {"role": "user", "content": f"[tool result for call call_1]\nsunny\n{IMAGE_PLACEHOLDER}"}
    # the thinking-only assistant turn disappears; the mid-conversation system turn stays
    assert [t["role"] for t in turns[3:]] == ["system", "user"]
    assert keep_from(turns) == 4


def test_no_system_prompt_leaves_the_template_default() -> None:
    head, turns = chat_messages(Request(model="m", messages=[Message("user", [Text("hi")])]), None)
    assert head == []
    assert turns == [{"role": "user", "content": "hi"}]


def test_tool_plan_only_when_a_tool_call_is_forced() -> None:
    base = Request(model="m", messages=[Message("user", [Text("hi")])], tools=[WEATHER, SEARCH])
    assert tool_plan(base) is None
    base.tool_choice = ToolChoice("auto")
    assert tool_plan(base) is None
    base.tool_choice = ToolChoice("none")
    assert tool_plan(base) is None

    base.tool_choice = ToolChoice("tool", "get_weather")
    plan = tool_plan(base)
    assert plan is not None and plan.name == "get_weather"
    assert plan.schema == {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert "get_weather" in plan.note
    head, _ = chat_messages(base, plan)
    assert head[0]["content"] == plan.note

    base.tool_choice = ToolChoice("required")
    plan = tool_plan(base)
    assert plan is not None and plan.name is None and plan.names == ("get_weather", "search")
    assert [o["properties"]["name"]["const"] for o in plan.schema["anyOf"]] == ["get_weather", "search"]

    base.tools = [SEARCH]
    plan = tool_plan(base)
    assert plan is not None and plan.name == "search"

    base.tool_choice = ToolChoice("tool", "nope")
    with pytest.raises(InvalidRequest, match="nope"):
        tool_plan(base)


def test_response_format_schema() -> None:
    req = Request(model="m", messages=[])
    assert response_schema(req) is None
    req.response_format = {"type": "text"}
    assert response_schema(req) is None
    req.response_format = {"type": "json_object"}
    assert response_schema(req) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req.response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert response_schema(req) == schema


def test_stop_scanner_holds_back_partial_stop_strings() -> None:
    sc = StopScanner(["END"], ["<|im_end|>"])
    assert sc.feed("Hello E") == ("Hello ", None)
    assert sc.feed("N") == ("", None)
    assert sc.feed("X more") == ("ENX more", None)
    assert sc.feed(" and EN") == (" and ", None)
    assert sc.feed("D tail") == ("", ("END", True))
    sc = StopScanner([], ["<|im_end|>"])
    assert sc.feed("done<|im") == ("done", None)
    assert sc.feed("_end|>junk") == ("", ("<|im_end|>", False))
    sc = StopScanner(["x"], [])
    assert sc.feed("abc") == ("abc", None)
    assert sc.flush() == ""


def test_missing_model_file_is_a_clear_upstream_error(tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'stepplan[local]')")
    cfg = UpstreamConfig(name="mine", protocol="local", model_path=str(tmp_path / "absent.gguf"))
    with pytest.raises(UpstreamError, match="model file not found"):
        resolve_model_path(cfg)


def test_missing_package_is_a_clear_upstream_error(monkeypatch) -> None:
    import stepplan.engines._llama as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UpstreamError, match=r"pip install 'stepplan\[local\]'") as exc:
        resolve_model_path(UpstreamConfig(name="local", protocol="local"))
    assert exc.value.status == 502


async def test_the_queue_is_bounded_and_close_fails_waiting_requests() -> None:
    import asyncio

    from stepplan.engines import _llama
    from stepplan.errors import Overloaded

    rt = _llama.LlamaRuntime(UpstreamConfig(name="local", protocol="local"), "/nonexistent.gguf")
    rt._thread = threading.Thread(target=lambda: None)  # a worker that never picks anything up
    loop = asyncio.get_running_loop()

    def job() -> _llama.Job:
        s = _llama.Sampling(None, 0.2, 0.95, 40, 0.0, 0.0, None, [])
        return _llama.Job([], [{"role": "user", "content": "hi"}], s, None, None, loop, asyncio.Queue())

    waiting = [job() for _ in range(_llama.MAX_WAITING)]
    for j in waiting:
        rt.submit(j)
    with pytest.raises(Overloaded, match="busy"):
        rt.submit(job())
    rt.close()
    for j in waiting:
        assert j.cancel.is_set()
        assert isinstance(await asyncio.wait_for(j.out.get(), 1), Overloaded)
    with pytest.raises(Overloaded, match="shutting down"):
        rt.submit(job())

"""OpenAI Responses requests: wire JSON → canonical :class:`Request` and a :class:`Shape`.

The canonical request is what every engine understands; the shape is what only this protocol
needs to answer: how the tool names the model saw map back to the client's tools (namespaces
are flattened, custom tools become one-string-argument functions), which response fields to
echo, whether to store the response and to include sealed reasoning, and this request's input
items as they will be listed later.

Items become canonical turns in order: ``message`` items by role (a leading ``system`` or
``developer`` message is the system prompt; later ones stay in place), ``reasoning``,
``function_call``, ``custom_tool_call`` and assistant ``message`` items form assistant turns, and
``function_call_output`` / ``custom_tool_call_output`` become tool results. A ``reasoning`` item
is kept only when its ``encrypted_content`` is one this gateway sealed (see
:mod:`stepplan.reasoning_seal`); any other is dropped, never rejected. Items produced by hosted
tools (``web_search_call`` and friends) are dropped from history. Unknown top-level fields are
accepted and not forwarded. The decoder never mutates its input.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest, UnsupportedContent
from . import _check as c
from . import effort as efforts
from . import limits
from .canonical import Block, Image, Message, Request, Text, Thinking, Tool, ToolCall, ToolChoice, ToolResult

Opener = Callable[[str], Thinking | None]

WEB_SEARCH_TYPES = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26",
                              "web_search_preview_2025_03_11"})
# History items made by hosted tools: no upstream of ours can take them back.
HOSTED_ITEMS = frozenset({"web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call",
                          "mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response",
                          "compaction", "tool_search_call", "tool_search_output"})
SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})
ENCRYPTED_REASONING = "reasoning.encrypted_content"
CUSTOM_INPUT = "input"  # the one string argument a custom tool is given as a function
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(slots=True)
class ClientTool:
    """A tool as the client defined it, behind the name the model sees."""

    name: str
    namespace: str | None = None
    custom: bool = False


@dataclass(slots=True)
class Shape:
    """What a Responses client asked about the answer, beyond the canonical request."""

    tools: dict[str, ClientTool] = field(default_factory=dict)  # exposed name → client's tool
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response object repeats
    store: bool = True
    include_encrypted: bool = False
    summary: bool = False
    previous_response_id: str | None = None
    web_search: list[dict[str, Any]] = field(default_factory=list)  # the route decides what to do with them
    input_items: list[dict[str, Any]] = field(default_factory=list)  # this request's items, with ids

    def client_tool(self, exposed: str) -> ClientTool:
        return self.tools.get(exposed) or ClientTool(exposed)


# ============================================================================ tool names
def flat_name(namespace: str, name: str) -> str:
    """The name a namespaced tool gets upstream: ``ns__name``, or a hashed form when that is not
    a valid function name (64 characters of ``[A-Za-z0-9_-]``)."""
    flat = f"{namespace}__{name}"
    if _NAME_OK.match(flat):
        return flat
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=4).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", flat)[:55]
    return f"{stem}_{digest}"


def custom_parameters(fmt: Any, where: str) -> tuple[dict[str, Any], str]:
    """A custom tool's function parameters, and a description suffix telling its input grammar."""
    hint = ""
    if fmt is not None:
        f = c.obj(fmt, f"{where}.format")
        kind = f.get("type")
        if kind == "grammar":
            syntax = c.opt_str(f, "syntax", f"{where}.format.syntax") or "lark"
            definition = c.string(f.get("definition"), f"{where}.format.definition")
            hint = f"\n\nThe input must follow this {syntax} grammar:\n{definition}"
        elif kind != "text":
            raise InvalidRequest(f"{where}.format.type must be 'text' or 'grammar'", param=f"{where}.format.type")
    params = {"type": "object", "additionalProperties": False, "required": [CUSTOM_INPUT],
              "properties": {CUSTOM_INPUT: {"type": "string",
                                            "description": "The tool's raw input as plain text (not JSON)."}}}
    return params, hint


class _Tools:
    def __init__(self) -> None:
        self.tools: list[Tool] = []
        self.map: dict[str, ClientTool] = {}
        self.web_search: list[dict[str, Any]] = []

    def add(self, t: dict[str, Any], where: str, namespace: str | None = None) -> None:
        kind = t.get("type")
        if kind not in ("function", "custom"):
            raise UnsupportedContent(f"tool type {kind!r} is not supported inside a namespace", param=f"{where}.type")
        name = c.string(t.get("name"), f"{where}.name")
        if not name:
            raise InvalidRequest(f"'{where}.name' must not be empty", param=f"{where}.name")
        if len(self.tools) >= limits.current.max_tools:  # namespaces' tools count too
            raise InvalidRequest(f"more than {limits.current.setting('max_tools')} tools", param=where)
        desc = c.opt_str(t, "description", f"{where}.description")
        c.opt_bool(t, "strict", f"{where}.strict")  # accepted; not forwarded (as on chat completions)
        if kind == "function":
            params = t.get("parameters")
            parameters = (c.obj(params, f"{where}.parameters") if params is not None
                          else {"type": "object", "properties": {}})
        else:
            parameters, hint = custom_parameters(t.get("format"), where)
            desc = (desc or "") + hint or None
        exposed = _exposed(name, namespace)
        if exposed in self.map:
            raise InvalidRequest(f"tool name '{exposed}' is defined twice", param=f"{where}.name")
        self.map[exposed] = ClientTool(name, namespace, kind == "custom")
        self.tools.append(Tool(exposed, desc, parameters))


def _decode_tools(raw: Any) -> _Tools:
    out = _Tools()
    for i, t in enumerate(c.lst(raw, "tools", "max_tools")):
        where = f"tools[{i}]"
        t = c.obj(t, where)
        kind = t.get("type")
        if kind in ("function", "custom"):
            out.add(t, where)
        elif kind == "namespace":
            ns = c.string(t.get("name"), f"{where}.name")
            for j, inner in enumerate(c.lst(t.get("tools"), f"{where}.tools", "max_tools")):
                out.add(c.obj(inner, f"{where}.tools[{j}]"), f"{where}.tools[{j}]", ns)
        elif c.word_in(kind, WEB_SEARCH_TYPES):
            out.web_search.append(t)
        else:
            raise UnsupportedContent(f"tool type {kind!r} is not supported; define it as a function or custom tool",
                                     param=f"{where}.type")
    return out


def _exposed(name: str, namespace: str | None) -> str:
    return flat_name(namespace, name) if namespace else name


def _decode_tool_choice(v: Any, tools: _Tools) -> ToolChoice | None:
    if v is None:
        return None
    if v in ("auto", "none", "required"):
        return ToolChoice(v)
    tc = c.obj(v, "tool_choice")
    kind = tc.get("type")
    if kind in ("function", "custom"):
        name = _exposed(c.string(tc.get("name"), "tool_choice.name"),
                        c.opt_str(tc, "namespace", "tool_choice.namespace"))
        if name not in tools.map:
            raise InvalidRequest(f"tool_choice names tool '{name}', which is not in 'tools'", param="tool_choice.name")
        return ToolChoice("tool", name)
    if kind == "allowed_tools":
        mode = tc.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise InvalidRequest("tool_choice.mode must be 'auto' or 'required'", param="tool_choice.mode")
        allowed: set[str] = set()
        for i, a in enumerate(c.lst(tc.get("tools"), "tool_choice.tools", "max_tools")):
            a = c.obj(a, f"tool_choice.tools[{i}]")
            if a.get("type") in ("function", "custom"):
                allowed.add(_exposed(c.string(a.get("name"), f"tool_choice.tools[{i}].name"),
                                     c.opt_str(a, "namespace", f"tool_choice.tools[{i}].namespace")))
        tools.tools = [t for t in tools.tools if t.name in allowed]
        return ToolChoice(mode)
    if c.word_in(kind, WEB_SEARCH_TYPES):
        return ToolChoice("auto")  # a hosted tool the gateway may have to drop; the model chooses
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required', or an object of type function, custom "
                         "or allowed_tools", param="tool_choice")


# ============================================================================ input items
def _image(p: dict[str, Any], where: str) -> Image:
    detail = c.opt_str(p, "detail", f"{where}.detail")
    if p.get("file_id") is not None and p.get("image_url") is None:
        raise UnsupportedContent("input_image.file_id (Files API) is not supported; send image_url as an http(s) "
                                 "or data URL", param=f"{where}.file_id")
    url = c.string(p.get("image_url"), f"{where}.image_url")
    try:
        media, data = c.split_data_url(url)
    except InvalidRequest:
        raise InvalidRequest("malformed data URL in input_image.image_url", param=f"{where}.image_url") from None
    if data is not None:
        return Image(data=data, media_type=media, detail=detail)
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest("input_image.image_url must be an http(s) URL or a data URL", param=f"{where}.image_url")
    return Image(url=url, detail=detail)


def _parts(content: Any, where: str, *, media: bool) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(c.string(content, where))] if content else []
    out: list[Block] = []
    for i, raw in enumerate(c.lst(content, where, "max_content_parts")):
        w = f"{where}[{i}]"
        p = c.obj(raw, w)
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text"):
            out.append(Text(c.string(p.get("text"), f"{w}.text")))
        elif kind == "refusal":
            out.append(Text(c.string(p.get("refusal"), f"{w}.refusal")))
        elif kind == "input_image" and media:
            out.append(_image(p, w))
        elif kind == "input_file":
            raise UnsupportedContent("input_file is not supported on the Step Plan channel; send the file's text "
                                     "as input_text", param=f"{w}.type")
        elif kind == "input_image":
            raise InvalidRequest(f"input_image is not allowed in {where}", param=f"{w}.type")
        else:
            raise InvalidRequest(f"unknown content part type {kind!r} in {where}", param=f"{w}.type")
    return out


class _Turns:
    """Canonical turns built item by item."""

    def __init__(self) -> None:
        self.system: list[Text] = []
        self.messages: list[Message] = []

    def system_text(self, text: str) -> None:
        if not self.messages:
            self.system.append(Text(text))
        else:
            self.messages.append(Message("system", [Text(text)]))

    def assistant(self, blocks: list[Block]) -> None:
        if not self.messages or self.messages[-1].role != "assistant":
            self.messages.append(Message("assistant", []))
        self.messages[-1].content.extend(blocks)

    def user(self, blocks: list[Block]) -> None:
        self.messages.append(Message("user", blocks))

    def result(self, r: ToolResult) -> None:
        prev = self.messages[-1] if self.messages else None
        if prev is not None and prev.role == "user" and prev.content and all(
                isinstance(b, ToolResult) for b in prev.content):
            prev.content.append(r)
        else:
            self.messages.append(Message("user", [r]))


def _message(turns: _Turns, m: dict[str, Any], where: str) -> None:
    role = m.get("role")
    content = m.get("content")
    if role in ("system", "developer"):
        turns.system_text("".join(b.text for b in _parts(content, f"{where}.content", media=False)
                                  if isinstance(b, Text)))
    elif role == "user":
        turns.user(_parts(content, f"{where}.content", media=True))
    elif role == "assistant":
        turns.assistant(_parts(content, f"{where}.content", media=False))
    else:
        raise InvalidRequest(f"{where}.role must be one of system, developer, user, assistant; got {role!r}",
                             param=f"{where}.role")


def _item(turns: _Turns, it: dict[str, Any], where: str, opener: Opener) -> None:
    kind = it.get("type", "message")
    if kind == "message":
        _message(turns, it, where)
    elif kind == "function_call":
        args = it.get("arguments")
        args = "" if args is None else c.string(args, f"{where}.arguments")
        name = _exposed(c.string(it.get("name"), f"{where}.name"),
                        c.opt_str(it, "namespace", f"{where}.namespace"))
        turns.assistant([ToolCall(c.string(it.get("call_id"), f"{where}.call_id"), name, args or "{}")])
    elif kind == "custom_tool_call":
        name = _exposed(c.string(it.get("name"), f"{where}.name"),
                        c.opt_str(it, "namespace", f"{where}.namespace"))
        raw = c.string(it.get("input"), f"{where}.input")
        turns.assistant([ToolCall(c.string(it.get("call_id"), f"{where}.call_id"), name,
                                  orjson.dumps({CUSTOM_INPUT: raw}).decode())])
    elif kind in ("function_call_output", "custom_tool_call_output"):
        turns.result(ToolResult(c.string(it.get("call_id"), f"{where}.call_id"),
                                _parts(it.get("output"), f"{where}.output", media=True)))
    elif kind == "reasoning":
        sealed = it.get("encrypted_content")
        thinking = opener(sealed) if isinstance(sealed, str) and sealed else None
        if thinking is not None:  # anything else is not ours to replay as the model's own reasoning
            turns.assistant([thinking])
    elif kind == "item_reference":
        raise UnsupportedContent("item_reference input items are not supported; send the item itself or use "
                                 "previous_response_id", param=f"{where}.type")
    elif not c.word_in(kind, HOSTED_ITEMS):
        raise InvalidRequest(f"unknown input item type {kind!r} in {where}", param=f"{where}.type")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def listed_items(raw: Any) -> list[dict[str, Any]]:
    """This request's input items as ``GET …/input_items`` lists them: typed, with ids, content as parts."""
    if isinstance(raw, str):
        return [{"id": _new_id("msg"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": raw}]}]
    out: list[dict[str, Any]] = []
    for it in raw:
        item = dict(it)
        item.setdefault("type", "message")
        if item["type"] == "message":
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            if isinstance(item.get("content"), str):
                item["content"] = [{"type": part, "text": item["content"]}]
            item.setdefault("status", "completed")
        prefix = {"message": "msg", "function_call_output": "fco", "custom_tool_call_output": "ctco",
                  "function_call": "fc", "custom_tool_call": "ctc", "reasoning": "rs"}.get(item["type"], "item")
        if not isinstance(item.get("id"), str) or not item["id"]:
            item["id"] = _new_id(prefix)
        out.append(item)
    return out


# ============================================================================ request
def _text_format(v: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``text`` → (canonical response_format, the text config to echo)."""
    if v is None:
        return None, {"format": {"type": "text"}}
    t = c.obj(v, "text")
    fmt = t.get("format")
    if fmt is None:
        return None, {**t, "format": {"type": "text"}}
    f = c.obj(fmt, "text.format")
    kind = f.get("type")
    if kind == "text":
        return None, t
    if kind == "json_object":
        return {"type": "json_object"}, t
    if kind == "json_schema":
        js: dict[str, Any] = {"name": c.string(f.get("name"), "text.format.name"),
                              "schema": c.obj(f.get("schema"), "text.format.schema")}
        strict = c.opt_bool(f, "strict", "text.format.strict")
        if strict is not None:
            js["strict"] = strict
        desc = c.opt_str(f, "description", "text.format.description")
        if desc is not None:
            js["description"] = desc
        return {"type": "json_schema", "json_schema": js}, t
    raise InvalidRequest("text.format.type must be text, json_object or json_schema", param="text.format.type")


def _metadata(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    m = c.obj(v, "metadata")
    for k, val in m.items():
        c.string(val, f"metadata.{k}")
    return m


def decode_request(body: Any, opener: Opener, history: Sequence[dict[str, Any]] = ()) -> tuple[Request, Shape]:
    """Decode a Responses request. ``history`` holds the items of the ``previous_response_id``
    chain (earlier inputs and outputs), which come before this request's ``input``."""
    b = c.obj(body, "body")
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    if b.get("conversation") is not None:
        raise InvalidRequest("the Conversations API is not supported; use previous_response_id or send the "
                             "history in 'input'", param="conversation")
    if b.get("prompt") is not None:
        raise InvalidRequest("prompt templates are not supported; send 'instructions' and 'input'", param="prompt")
    if b.get("background") is True:
        raise InvalidRequest("background responses are not supported; send the request without 'background'",
                             param="background")
    raw_input = b.get("input")
    if raw_input is None:
        raise InvalidRequest("'input' is required: a string or an array of input items", param="input")
    items = [c.string(raw_input, "input")] if isinstance(raw_input, str) else c.lst(raw_input, "input",
                                                                                  "max_messages")
    turns = _Turns()
    instructions = b.get("instructions")
    if instructions is not None:
        turns.system_text(c.string(instructions, "instructions"))
    for i, it in enumerate(history):
        _item(turns, it, f"previous_response_id item {i}", opener)
    if isinstance(raw_input, str):
        turns.user([Text(raw_input)] if raw_input else [])
    else:
        for i, it in enumerate(items):
            _item(turns, c.obj(it, f"input[{i}]"), f"input[{i}]", opener)
    if not turns.messages:
        raise InvalidRequest("'input' must contain at least one message or item", param="input")

    tools = _decode_tools(b["tools"]) if b.get("tools") is not None else _Tools()
    tool_choice = _decode_tool_choice(b.get("tool_choice"), tools)
    response_format, text_echo = _text_format(b.get("text"))
    reasoning = c.obj(b["reasoning"], "reasoning") if b.get("reasoning") is not None else {}
    # Kept as sent (any word of the one effort ladder, ``none`` included); the pipeline maps it onto
    # the serving model's levels exactly as for the other two protocols (protocols/effort.py).
    effort = efforts.parse(reasoning.get("effort"), "reasoning.effort")
    summary = c.opt_str(reasoning, "summary", "reasoning.summary") or c.opt_str(
        reasoning, "generate_summary", "reasoning.generate_summary")
    if summary is not None and summary not in SUMMARY_MODES:
        raise InvalidRequest("reasoning.summary must be auto, concise or detailed", param="reasoning.summary")
    include = c.str_list(b.get("include"), "include")
    truncation = c.opt_str(b, "truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise InvalidRequest("'truncation' must be 'auto' or 'disabled'", param="truncation")
    store = c.opt_bool(b, "store")
    prev = c.opt_str(b, "previous_response_id")
    user = c.opt_str(b, "safety_identifier") or c.opt_str(b, "user")
    cache_key = c.opt_str(b, "prompt_cache_key")
    max_tokens = c.opt_int(b, "max_output_tokens", lo=1)
    parallel = c.opt_bool(b, "parallel_tool_calls")
    req = Request(
        model=model,
        messages=turns.messages,
        system=turns.system,
        tools=tools.tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_tokens=max_tokens,
        temperature=c.opt_num(b, "temperature", 0.0, 2.0),
        top_p=c.opt_num(b, "top_p", 0.0, 1.0),
        response_format=response_format,
        stream=c.opt_bool(b, "stream") or False,
        effort=effort,
        user=user,
        session_id=cache_key,
    )
    echo = {
        "instructions": instructions, "max_output_tokens": max_tokens, "metadata": _metadata(b.get("metadata")) or {},
        "parallel_tool_calls": True if parallel is None else parallel, "previous_response_id": prev,
        "reasoning": {"effort": reasoning.get("effort"), "summary": summary}, "store": store is not False,
        "temperature": req.temperature, "text": text_echo, "tool_choice": b.get("tool_choice") or "auto",
        "tools": list(b.get("tools") or []), "top_p": req.top_p, "truncation": truncation or "disabled",
        "user": c.opt_str(b, "user"), "safety_identifier": c.opt_str(b, "safety_identifier"),
        "prompt_cache_key": cache_key, "background": False,
    }
    shape = Shape(tools=tools.map, echo=echo, store=store is not False,
                  include_encrypted=ENCRYPTED_REASONING in include, summary=summary is not None,
                  previous_response_id=prev, web_search=tools.web_search,
                  input_items=listed_items(raw_input) if store is not False else [])
    return req, shape


__all__ = ["ClientTool", "Opener", "Shape", "custom_parameters", "decode_request", "flat_name", "listed_items"]

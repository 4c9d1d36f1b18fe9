"""OpenAI Chat Completions requests: wire JSON ⇄ canonical :class:`Request`.

``decode_request`` reads what an OpenAI client sent; ``encode_request`` writes what an
OpenAI-compatible upstream receives. Neither mutates its input, so a retry or a
fallback can encode the same canonical request again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from . import _check as c
from . import effort as efforts
from .canonical import (
    Audio,
    Block,
    Document,
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

MID_SYSTEM_OPEN = "<system-reminder>\n"
MID_SYSTEM_CLOSE = "\n</system-reminder>"


# ============================================================================ decode
def _decode_part(part: Any, where: str) -> Block:
    p = c.obj(part, where)
    kind = p.get("type")
    if kind == "text":
        return Text(c.string(p.get("text"), f"{where}.text"), cache=c.cache_mark(p))
    if kind == "image_url":
        iu = p.get("image_url")
        if isinstance(iu, str):
            iu = {"url": iu}
        iu = c.obj(iu, f"{where}.image_url")
        url = c.string(iu.get("url"), f"{where}.image_url.url")
        detail = c.opt_str(iu, "detail", f"{where}.image_url.detail")
        media, data = c.split_data_url(url)
        if data is not None:
            return Image(data=data, media_type=media, detail=detail, cache=c.cache_mark(p))
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest("image_url.url must be an http(s) URL or a data URL", param=f"{where}.image_url.url")
        return Image(url=url, detail=detail, cache=c.cache_mark(p))
    if kind == "video_url":
        vu = p.get("video_url")
        if isinstance(vu, str):
            vu = {"url": vu}
        vu = c.obj(vu, f"{where}.video_url")
        url = c.string(vu.get("url"), f"{where}.video_url.url")
        if not url.startswith(("http://", "https://", "data:video/")):
            raise InvalidRequest("video_url.url must be an http(s) URL or a data:video/ URL",
                                 param=f"{where}.video_url.url")
        return Video(url)
    if kind == "input_audio":
        ia = c.obj(p.get("input_audio"), f"{where}.input_audio")
        return Audio(c.string(ia.get("data"), f"{where}.input_audio.data"), c.opt_str(ia, "format"))
    if kind == "file":
        f = c.obj(p.get("file"), f"{where}.file")
        media, data = c.split_data_url(c.opt_str(f, "file_data") or "")
        return Document(media_type=media, data=data)
    if kind == "refusal":
        return Text(c.string(p.get("refusal"), f"{where}.refusal"))
    raise InvalidRequest(f"unknown content part type {kind!r} in {where}", param=f"{where}.type")


def _decode_content(content: Any, where: str) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(c.string(content, where))] if content else []
    parts = c.lst(content, where, "max_content_parts")
    return [_decode_part(p, f"{where}[{i}]") for i, p in enumerate(parts)]


def _system_of(m: dict[str, Any], where: str) -> Text:
    """A system message as one text; marked for caching when the message or any part is."""
    texts = [b for b in _decode_content(m.get("content"), where) if isinstance(b, Text)]
    mark = c.cache_mark(m) or next((t.cache for t in reversed(texts) if t.cache), False)
    return Text("".join(t.text for t in texts), cache=mark)


def _mark_last(m: dict[str, Any], blocks: list[Block]) -> list[Block]:
    """A message-level ``cache_control`` (LiteLLM's form) marks the message's last block."""
    if "cache_control" in m and blocks and isinstance(blocks[-1], (Text, Image, ToolCall)):
        blocks[-1].cache = c.cache_mark(m)
    return blocks


def _decode_tool_calls(raw: Any, where: str) -> list[Block]:
    out: list[Block] = []
    for i, tc in enumerate(c.lst(raw, where, "max_tools")):
        tc = c.obj(tc, f"{where}[{i}]")
        fn = c.obj(tc.get("function"), f"{where}[{i}].function")
        args = fn.get("arguments", "")
        if not isinstance(args, str):
            args = c.json_text(c.obj(args, f"{where}[{i}].function.arguments"), f"{where}[{i}].function.arguments")
        out.append(ToolCall(
            id=c.string(tc.get("id"), f"{where}[{i}].id"),
            name=c.string(fn.get("name"), f"{where}[{i}].function.name"),
            arguments=args or "{}",
        ))
    return out


def _decode_messages(raw: Any) -> tuple[list[Text], list[Message]]:
    items = c.lst(raw, "messages", "max_messages")
    if not items:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    system: list[Text] = []
    messages: list[Message] = []
    for i, m in enumerate(items):
        where = f"messages[{i}]"
        m = c.obj(m, where)
        role = m.get("role")
        if role in ("system", "developer"):
            text = _system_of(m, f"{where}.content")
            if not messages:
                system.append(text)
            else:
                messages.append(Message("system", [text]))
        elif role == "user":
            messages.append(Message("user", _mark_last(m, _decode_content(m.get("content"), f"{where}.content"))))
        elif role == "assistant":
            blocks: list[Block] = []
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                blocks.append(Thinking(reasoning))
            blocks.extend(_decode_content(m.get("content"), f"{where}.content"))
            if m.get("tool_calls"):
                blocks.extend(_decode_tool_calls(m["tool_calls"], f"{where}.tool_calls"))
            messages.append(Message("assistant", _mark_last(m, blocks)))
        elif role in ("tool", "function"):
            call_id = m.get("tool_call_id") if role == "tool" else m.get("name")
            result = ToolResult(c.string(call_id, f"{where}.tool_call_id"),
                                _decode_content(m.get("content"), f"{where}.content"), cache=c.cache_mark(m))
            prev = messages[-1] if messages else None
            if prev is not None and prev.role == "user" and prev.content and all(
                    isinstance(b, ToolResult) for b in prev.content):
                prev.content.append(result)
            else:
                messages.append(Message("user", [result]))
        else:
            raise InvalidRequest(f"{where}.role must be one of system, user, assistant, tool; got {role!r}",
                                 param=f"{where}.role")
    return system, messages


def _decode_tools(raw: Any) -> list[Tool]:
    tools: list[Tool] = []
    for i, t in enumerate(c.lst(raw, "tools", "max_tools")):
        t = c.obj(t, f"tools[{i}]")
        kind = t.get("type", "function")
        if kind == "function":
            fn = c.obj(t.get("function"), f"tools[{i}].function")
            params = fn.get("parameters")
            tools.append(Tool(
                name=c.string(fn.get("name"), f"tools[{i}].function.name"),
                description=c.opt_str(fn, "description", f"tools[{i}].function.description"),
                parameters=c.obj(params, f"tools[{i}].function.parameters") if params is not None
                else {"type": "object", "properties": {}},
            ))
        elif isinstance(kind, str):
            server_fn = t.get("function")
            desc = server_fn.get("description") if isinstance(server_fn, dict) else None
            tools.append(Tool(name=kind, description=desc, parameters={}, kind=kind))
        else:
            raise InvalidRequest(f"tools[{i}].type must be a string", param=f"tools[{i}].type")
    return tools


def _decode_tool_choice(v: Any) -> ToolChoice | None:
    if v is None:
        return None
    if v in ("auto", "none", "required"):
        return ToolChoice(v)
    if isinstance(v, dict) and v.get("type") == "function":
        fn = c.obj(v.get("function"), "tool_choice.function")
        return ToolChoice("tool", c.string(fn.get("name"), "tool_choice.function.name"))
    raise InvalidRequest("'tool_choice' must be 'auto', 'none', 'required' or {type: 'function', function: {name}}",
                         param="tool_choice")


def decode_request(body: Any) -> Request:
    b = c.obj(body, "body")
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    system, messages = _decode_messages(b.get("messages"))
    stream = c.opt_bool(b, "stream") or False
    so = b.get("stream_options")
    include_usage = bool(c.obj(so, "stream_options").get("include_usage")) if so is not None else False
    max_tokens = c.opt_int(b, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = c.opt_int(b, "max_tokens", lo=1)
    rf = b.get("response_format")
    if rf is not None:
        rf = c.obj(rf, "response_format")
        if rf.get("type") not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("response_format.type must be text, json_object or json_schema",
                                 param="response_format.type")
        if rf["type"] == "json_schema":
            js = c.obj(rf.get("json_schema"), "response_format.json_schema")
            c.string(js.get("name"), "response_format.json_schema.name")
    effort = efforts.parse(b.get("reasoning_effort"), "reasoning_effort")
    thinking = budget = None
    th = b.get("thinking")  # DeepSeek's extension; Anthropic's budget form is read too
    if isinstance(th, dict) and th.get("type") in ("enabled", "disabled", "adaptive"):
        thinking = th["type"] != "disabled"
        if th["type"] == "enabled":
            budget = c.opt_int(th, "budget_tokens", lo=1, name="thinking.budget_tokens")
    rfmt = c.opt_str(b, "reasoning_format")
    if rfmt is not None and rfmt not in ("general", "deepseek-style"):
        raise InvalidRequest("reasoning_format must be 'general' or 'deepseek-style'", param="reasoning_format")
    n = c.opt_int(b, "n", lo=1)
    if n is not None and n > 1:
        raise InvalidRequest("n > 1 is not supported on the Step Plan channel; send n=1", param="n")
    return Request(
        model=model,
        messages=messages,
        system=system,
        tools=_decode_tools(b["tools"]) if b.get("tools") is not None else [],
        tool_choice=_decode_tool_choice(b.get("tool_choice")),
        parallel_tool_calls=c.opt_bool(b, "parallel_tool_calls"),
        max_tokens=max_tokens,
        temperature=c.opt_num(b, "temperature", 0.0, 2.0),
        top_p=c.opt_num(b, "top_p", 0.0, 1.0),
        top_k=c.opt_int(b, "top_k", lo=0),
        stop=c.str_list(b.get("stop"), "stop"),
        n=n,
        presence_penalty=c.opt_num(b, "presence_penalty", -2.0, 2.0),
        frequency_penalty=c.opt_num(b, "frequency_penalty", -2.0, 2.0),
        seed=c.opt_int(b, "seed"),
        response_format=rf,
        stream=stream,
        include_usage=include_usage,
        effort=effort,
        thinking=thinking,
        thinking_budget=budget,
        reasoning_format=rfmt,
        user=c.opt_str(b, "user"),
    )


# ============================================================================ encode (upstream side)
def _part(block: Block) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, Image):
        iu: dict[str, Any] = {"url": block.as_url()}
        if block.detail:
            iu["detail"] = block.detail
        return {"type": "image_url", "image_url": iu}
    if isinstance(block, Video):
        return {"type": "video_url", "video_url": {"url": block.url}}
    if isinstance(block, Audio):
        ia: dict[str, Any] = {"data": block.data}
        if block.format:
            ia["format"] = block.format
        return {"type": "input_audio", "input_audio": ia}
    if isinstance(block, Document) and block.text is not None:
        return {"type": "text", "text": block.text}
    raise InvalidRequest(f"{type(block).__name__.lower()} content cannot be sent to this model")


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text as a string (what text-only servers expect); mixed content as parts."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) != 1 else parts[0]["text"]
    return parts


def _result_text(r: ToolResult) -> tuple[str, list[dict[str, Any]]]:
    texts, media = [], []
    for b in r.content:
        if isinstance(b, Text):
            texts.append(b.text)
        else:
            media.append(_part(b))
    text = "\n".join(texts)
    if r.is_error:
        text = f"[tool error] {text}" if text else "[tool error]"
    if media and not text:
        text = "(see the attached media in the next message)"
    return text, media


def _merge_user(out: list[dict[str, Any]], parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if out and out[-1]["role"] == "user":
        prev = out[-1]["content"]
        prev_parts = [{"type": "text", "text": prev}] if isinstance(prev, str) else list(prev)
        sep = [{"type": "text", "text": "\n\n"}] if all(p["type"] == "text" for p in (*prev_parts, *parts)) else []
        out[-1]["content"] = _content([*prev_parts, *sep, *parts])
    else:
        out.append({"role": "user", "content": _content(parts)})


def encode_messages(req: Request, replay_reasoning: bool,
                    restore: Callable[[list[ToolCall]], str | None] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(t.text for t in req.system)})
    deferred: list[dict[str, Any]] = []  # mid-conversation system text waiting for tool results to go first
    for m in req.messages:
        if m.role == "system":
            text = "".join(b.text for b in m.content if isinstance(b, Text))
            part = {"type": "text", "text": MID_SYSTEM_OPEN + text + MID_SYSTEM_CLOSE}
            if deferred or (out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls")):
                deferred.append(part)  # tool messages must directly follow the assistant's tool calls
            else:
                _merge_user(out, [part])
            continue
        if deferred and not (m.role == "user" and any(isinstance(b, ToolResult) for b in m.content)):
            _merge_user(out, deferred)
            deferred = []
        if m.role == "user":
            parts: list[dict[str, Any]] = []
            media: list[dict[str, Any]] = []
            for b in m.content:
                if isinstance(b, ToolResult):
                    text, extra = _result_text(b)
                    out.append({"role": "tool", "tool_call_id": b.tool_call_id, "content": text})
                    media.extend(extra)
                elif isinstance(b, Thinking):
                    continue
                else:
                    parts.append(_part(b))
            if media:
                _merge_user(out, [{"type": "text", "text": "Attached media from tool result:"}, *media])
            _merge_user(out, [*deferred, *parts])
            deferred = []
        else:
            msg: dict[str, Any] = {"role": "assistant"}
            texts = [b.text for b in m.content if isinstance(b, Text)]
            calls = [b for b in m.content if isinstance(b, ToolCall)]
            reasoning = "".join(b.text for b in m.content if isinstance(b, Thinking) and not b.redacted)
            msg["content"] = "".join(texts) if texts or not calls else None
            if calls:
                msg["tool_calls"] = [{"id": tc.id, "type": "function",
                                      "function": {"name": tc.name, "arguments": tc.arguments}} for tc in calls]
            if replay_reasoning:
                if not reasoning and calls and restore is not None:
                    reasoning = restore(calls) or ""
                if reasoning:
                    msg["reasoning_content"] = reasoning
            out.append(msg)
    _merge_user(out, deferred)
    return out


def encode_request(req: Request, upstream_model: str, *, stream: bool, replay_reasoning: bool = True,
                   restore: Callable[[list[ToolCall]], str | None] | None = None,
                   deepseek_thinking: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model,
                            "messages": encode_messages(req, replay_reasoning, restore)}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "response_format",
                "parallel_tool_calls"):
        v = getattr(req, key)
        if v is not None:
            body[key] = v
    if req.stop:
        body["stop"] = req.stop
    if req.tools:
        tools: list[dict[str, Any]] = []
        for t in req.tools:
            if t.kind == "function":
                fn: dict[str, Any] = {"name": t.name, "parameters": t.parameters}
                if t.description:
                    fn["description"] = t.description
                tools.append({"type": "function", "function": fn})
            else:
                tools.append({"type": t.kind, "function": {"description": t.description or ""}})
        body["tools"] = tools
    tc = req.tool_choice
    if tc is not None and (req.tools or tc.mode == "none"):
        body["tool_choice"] = ({"type": "function", "function": {"name": tc.name}} if tc.mode == "tool"
                               else tc.mode)
    if deepseek_thinking and req.thinking is not None:
        body["thinking"] = {"type": "enabled" if req.thinking else "disabled"}
    if req.effort and req.thinking is not False:
        body["reasoning_effort"] = req.effort
    return body

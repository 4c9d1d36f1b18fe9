"""Anthropic Messages requests: wire JSON ⇄ canonical :class:`Request`.

``decode_request`` reads what an Anthropic client sent (Claude Code, OpenCode, the SDK),
including the beta fields those clients add; ``encode_request`` writes what an
Anthropic-protocol upstream receives. Neither mutates its input.

What the decoder does with fields it cannot honour: beta body fields
(``context_management``, ``container``, ``mcp_servers``, ``service_tier``, …) and
unknown top-level keys are accepted and dropped, as is Claude Code's per-session
``x-anthropic-billing-header`` system line; blocks produced by Anthropic's
server-side tools are dropped from history; a thinking block is kept only when its
signature is one this gateway made (see :class:`stepplan.reasoning.Signer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidRequest, UnsupportedContent
from . import _check as c
from . import effort as efforts
from .canonical import (
    Audio,
    Block,
    Cache,
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
from .openai_request import MID_SYSTEM_CLOSE, MID_SYSTEM_OPEN

if TYPE_CHECKING:
    from ..reasoning import Signer

# History blocks made by Anthropic-hosted server tools; no upstream of ours can take them back.
SERVER_TOOL_BLOCKS = frozenset({
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
})

CLAUDE_CODE_BILLING_LINE = "x-anthropic-billing-header:"
MIN_THINKING_BUDGET = 1024  # Anthropic's minimum; smaller client budgets are raised to it upstream
MAX_CACHE_BREAKPOINTS = 4  # Anthropic's limit per request (tools, system and messages together)


# ============================================================================ prompt-cache marks
_cache = c.cache_mark
_Cacheable = TypeVar("_Cacheable", Text, Image, Document)


def _marked(block: _Cacheable, b: dict[str, Any]) -> _Cacheable:
    if "cache_control" in b:
        block.cache = _cache(b)
    return block


def _cache_control(mark: Cache) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": mark} if isinstance(mark, str) else {"type": "ephemeral"}


# ============================================================================ decode
def _image(b: dict[str, Any], where: str) -> Image:
    src = c.obj(b.get("source"), f"{where}.source")
    kind = src.get("type")
    if kind == "base64":
        return Image(data=c.string(src.get("data"), f"{where}.source.data"),
                     media_type=c.string(src.get("media_type"), f"{where}.source.media_type"))
    if kind == "url":
        url = c.string(src.get("url"), f"{where}.source.url")
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"{where}.source.url must be an http(s) URL", param=f"{where}.source.url")
        return Image(url=url)
    if kind == "file":
        raise UnsupportedContent("image source type 'file' (Files API) is not supported; send base64 or a URL",
                                 param=f"{where}.source.type")
    raise InvalidRequest(f"{where}.source.type must be 'base64' or 'url'", param=f"{where}.source.type")


def _document(b: dict[str, Any], where: str) -> Document:
    src = c.obj(b.get("source"), f"{where}.source")
    kind = src.get("type")
    title = b.get("title") if isinstance(b.get("title"), str) else None
    if kind == "text":
        text = c.string(src.get("data"), f"{where}.source.data")
        return Document(media_type="text/plain", text=f"{title}\n\n{text}" if title else text)
    if kind == "content":
        inner = src.get("content")
        if isinstance(inner, str):
            text = c.string(inner, f"{where}.source.content")
        else:
            parts = c.lst(inner, f"{where}.source.content", "max_content_parts")
            text = "\n".join(c.string(c.obj(p, f"{where}.source.content[{i}]").get("text"),
                                      f"{where}.source.content[{i}].text") for i, p in enumerate(parts))
        return Document(media_type="text/plain", text=f"{title}\n\n{text}" if title else text)
    if kind == "base64":
        return Document(media_type=c.opt_str(src, "media_type", f"{where}.source.media_type") or "application/pdf",
                        data=c.string(src.get("data"), f"{where}.source.data"))
    if kind == "url":
        return Document(media_type="application/pdf", url=c.string(src.get("url"), f"{where}.source.url"))
    raise InvalidRequest(f"{where}.source.type must be one of base64, url, text, content",
                         param=f"{where}.source.type")


def _search_result(b: dict[str, Any], where: str) -> Text:
    title = b.get("title") if isinstance(b.get("title"), str) else ""
    source = b.get("source") if isinstance(b.get("source"), str) else ""
    parts = c.lst(b.get("content") or [], f"{where}.content", "max_content_parts")
    body = "\n".join(str(c.obj(p, f"{where}.content[{i}]").get("text") or "") for i, p in enumerate(parts))
    head = " — ".join(x for x in (title, source) if x)
    return Text(f"{head}\n{body}" if head else body)


def _result_content(v: Any, where: str) -> list[Block]:
    if v is None:
        return []
    if isinstance(v, str):
        return [Text(c.string(v, where))] if v else []
    out: list[Block] = []
    for i, raw in enumerate(c.lst(v, where, "max_content_parts")):
        w = f"{where}[{i}]"
        b = c.obj(raw, w)
        kind = b.get("type")
        if kind == "text":
            out.append(Text(c.string(b.get("text"), f"{w}.text"), cache=_cache(b)))
        elif kind == "image":
            out.append(_marked(_image(b, w), b))
        elif kind == "document":
            out.append(_marked(_document(b, w), b))
        elif kind == "search_result":
            out.append(_marked(_search_result(b, w), b))
        else:
            raise InvalidRequest(f"unsupported block type {kind!r} in {w}", param=f"{w}.type")
    return out


def _thinking(b: dict[str, Any], where: str, signer: Signer) -> Thinking | None:
    text = b.get("thinking")
    text = "" if text is None else c.string(text, f"{where}.thinking")
    sig = b.get("signature")
    ours, upstream = signer.open(text, sig if isinstance(sig, str) else None)
    if not ours:
        # Foreign or altered: its text is never replayed as the model's own reasoning
        # (the reasoning record can still restore ours by tool-call id).
        return None
    return Thinking(text, signature=upstream)


def _block(raw: Any, where: str, role: str, signer: Signer) -> Block | None:
    b = c.obj(raw, where)
    kind = b.get("type")
    if kind == "text":
        return Text(c.string(b.get("text"), f"{where}.text"), cache=_cache(b))
    if kind == "image":
        return _marked(_image(b, where), b)
    if kind == "document":
        return _marked(_document(b, where), b)
    if kind == "tool_use":
        if role != "assistant":
            raise InvalidRequest(f"{where}: tool_use blocks belong in assistant messages", param=f"{where}.type")
        args = b.get("input", {})
        return ToolCall(id=c.string(b.get("id"), f"{where}.id"), name=c.string(b.get("name"), f"{where}.name"),
                        arguments=c.json_text(c.obj(args, f"{where}.input"), f"{where}.input"), cache=_cache(b))
    if kind == "tool_result":
        if role != "user":
            raise InvalidRequest(f"{where}: tool_result blocks belong in user messages", param=f"{where}.type")
        is_error = b.get("is_error")
        if is_error is not None and not isinstance(is_error, bool):
            raise InvalidRequest(f"'{where}.is_error' must be a boolean", param=f"{where}.is_error")
        return ToolResult(c.string(b.get("tool_use_id"), f"{where}.tool_use_id"),
                          _result_content(b.get("content"), f"{where}.content"), is_error, cache=_cache(b))
    if kind == "thinking":
        return _thinking(b, where, signer) if role == "assistant" else None
    if kind == "redacted_thinking":
        data = c.string(b.get("data"), f"{where}.data")
        return Thinking(data, redacted=True) if role == "assistant" else None
    if kind == "search_result":
        return _marked(_search_result(b, where), b)
    if c.word_in(kind, SERVER_TOOL_BLOCKS):
        return None
    raise InvalidRequest(f"unknown content block type {kind!r} in {where}", param=f"{where}.type")


def _content(v: Any, where: str, role: str, signer: Signer) -> list[Block]:
    if isinstance(v, str):
        return [Text(c.string(v, where))] if v else []
    out: list[Block] = []
    for i, raw in enumerate(c.lst(v, where, "max_content_parts")):
        blk = _block(raw, f"{where}[{i}]", role, signer)
        if blk is not None:
            out.append(blk)
    return out


def _system_text(v: Any, where: str) -> list[Text]:
    if v is None:
        return []
    if isinstance(v, str):
        return [Text(c.string(v, where))] if v else []
    out: list[Text] = []
    for i, raw in enumerate(c.lst(v, where, "max_content_parts")):
        b = c.obj(raw, f"{where}[{i}]")
        if b.get("type") != "text":
            raise InvalidRequest(f"{where}[{i}] must be a text block", param=f"{where}[{i}].type")
        text = c.string(b.get("text"), f"{where}[{i}].text")
        if text.startswith(CLAUDE_CODE_BILLING_LINE):
            continue  # per-session attribution line for Anthropic; upstream it only spoils prefix caching
        out.append(Text(text, cache=_cache(b)))
    return out


def _decode_messages(raw: Any, signer: Signer) -> tuple[list[Text], list[Message]]:
    items = c.lst(raw, "messages", "max_messages")
    if not items:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    leading: list[Text] = []
    messages: list[Message] = []
    for i, m in enumerate(items):
        where = f"messages[{i}]"
        m = c.obj(m, where)
        role = m.get("role")
        if role not in ("user", "assistant", "system"):
            raise InvalidRequest(f"{where}.role must be 'user', 'assistant' or 'system'; got {role!r}",
                                 param=f"{where}.role")
        if "content" not in m:
            raise InvalidRequest(f"'{where}.content' is required", param=f"{where}.content")
        if role == "system":
            texts = _system_text(m["content"], f"{where}.content")
            if not messages:
                leading.extend(texts)
            elif texts:
                messages.append(Message("system", list(texts)))
            continue
        messages.append(Message(role, _content(m["content"], f"{where}.content", role, signer)))
    return leading, messages


def _decode_tools(raw: Any) -> list[Tool]:
    tools: list[Tool] = []
    for i, t in enumerate(c.lst(raw, "tools", "max_tools")):
        where = f"tools[{i}]"
        t = c.obj(t, where)
        kind = t.get("type")
        if kind in (None, "custom"):
            schema = t.get("input_schema")
            tools.append(Tool(
                name=c.string(t.get("name"), f"{where}.name"),
                description=c.opt_str(t, "description", f"{where}.description"),
                parameters=c.obj(schema, f"{where}.input_schema") if schema is not None
                else {"type": "object", "properties": {}},
                cache=_cache(t),
            ))
        elif isinstance(kind, str) and kind.startswith("web_search"):
            # A server tool: the raw definition rides along so an Anthropic upstream gets it verbatim.
            tools.append(Tool(name=str(t.get("name") or "web_search"), description=None,
                              parameters={k: v for k, v in t.items() if k != "cache_control"}, kind="web_search",
                              cache=_cache(t)))
        else:
            raise UnsupportedContent(f"tool type {kind!r} is not supported; define it as a custom tool "
                                     "with an input_schema", param=f"{where}.type")
    return tools


def _decode_tool_choice(v: Any) -> tuple[ToolChoice | None, bool | None]:
    if v is None:
        return None, None
    tc = c.obj(v, "tool_choice")
    kind = tc.get("type")
    parallel = c.opt_bool(tc, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    parallel = None if parallel is None else not parallel
    if kind == "auto":
        return ToolChoice("auto"), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "tool":
        return ToolChoice("tool", c.string(tc.get("name"), "tool_choice.name")), parallel
    raise InvalidRequest("tool_choice.type must be 'auto', 'any', 'tool' or 'none'", param="tool_choice.type")


def _decode_thinking(v: Any) -> tuple[bool | None, int | None]:
    if v is None:
        return None, None
    th = c.obj(v, "thinking")
    kind = th.get("type")
    if kind == "enabled":
        return True, c.opt_int(th, "budget_tokens", lo=1, name="thinking.budget_tokens")
    if kind == "adaptive":
        return True, None
    if kind == "disabled":
        return False, None
    raise InvalidRequest("thinking.type must be 'enabled', 'adaptive' or 'disabled'", param="thinking.type")


def _decode_output_config(v: Any) -> tuple[str | None, dict[str, Any] | None]:
    if v is None:
        return None, None
    oc = c.obj(v, "output_config")
    effort = efforts.parse(oc.get("effort"), "output_config.effort")  # mapped per model by the pipeline
    fmt = oc.get("format")
    response_format = None
    if fmt is not None:
        fmt = c.obj(fmt, "output_config.format")
        if fmt.get("type") != "json_schema":
            raise InvalidRequest("output_config.format.type must be 'json_schema'", param="output_config.format.type")
        response_format = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": c.obj(fmt.get("schema"), "output_config.format.schema")}}
    return effort, response_format


def decode_request(body: Any, signer: Signer, *, count_only: bool = False) -> Request:
    """Decode a Messages request; ``count_only`` (count_tokens) makes ``max_tokens`` optional."""
    b = c.obj(body, "body")
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    if b.get("max_tokens") is None and not count_only:
        raise InvalidRequest("'max_tokens' is required and must be > 0", param="max_tokens")
    max_tokens = c.opt_int(b, "max_tokens", lo=1)
    leading, messages = _decode_messages(b.get("messages"), signer)
    system = _system_text(b.get("system"), "system") + leading
    tool_choice, parallel = _decode_tool_choice(b.get("tool_choice"))
    thinking, budget = _decode_thinking(b.get("thinking"))
    effort, response_format = _decode_output_config(b.get("output_config"))
    metadata = b.get("metadata")
    user = None
    if metadata is not None:
        uid = c.obj(metadata, "metadata").get("user_id")
        if uid is not None:
            uid = c.string(uid, "metadata.user_id")
            user = None if uid.startswith("{") else uid  # Claude Code packs a JSON session record here
    stop = b.get("stop_sequences")
    return Request(
        model=model,
        messages=messages,
        system=system,
        tools=_decode_tools(b["tools"]) if b.get("tools") is not None else [],
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_tokens=max_tokens,
        temperature=c.opt_num(b, "temperature", 0.0, 2.0),
        top_p=c.opt_num(b, "top_p", 0.0, 1.0),
        top_k=c.opt_int(b, "top_k", lo=0),
        stop=c.str_list(c.lst(stop, "stop_sequences") if stop is not None else None, "stop_sequences"),
        response_format=response_format,
        stream=c.opt_bool(b, "stream") or False,
        effort=effort,
        thinking=thinking,
        thinking_budget=budget,
        user=user,
    )


# ============================================================================ encode (upstream side)
def _text(t: Text) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": t.text}
    if t.cache:
        out["cache_control"] = _cache_control(t.cache)
    return out


def _media(b: Block) -> dict[str, Any] | None:
    """A user-side block in Anthropic form; None for an empty text."""
    if isinstance(b, Text):
        return _text(b) if b.text else None
    if isinstance(b, Image):
        if b.url is not None:
            out: dict[str, Any] = {"type": "image", "source": {"type": "url", "url": b.url}}
        else:
            out = {"type": "image", "source": {"type": "base64", "media_type": b.media_type or "image/png",
                                               "data": b.data or ""}}
        if b.cache:
            out["cache_control"] = _cache_control(b.cache)
        return out
    if isinstance(b, Document) and b.text is not None:
        return _text(Text(b.text, cache=b.cache)) if b.text else None
    kind = type(b).__name__.lower() if isinstance(b, (Video, Audio, Document)) else "this"
    raise UnsupportedContent(f"{kind} content cannot be sent to an Anthropic-protocol upstream")


def _tool_result(r: ToolResult) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "tool_result", "tool_use_id": r.tool_call_id}
    parts = [p for p in (_media(b) for b in r.content) if p is not None]
    if parts and all(p["type"] == "text" and "cache_control" not in p for p in parts):
        out["content"] = "\n".join(p["text"] for p in parts)
    elif parts:
        out["content"] = parts
    if r.is_error is not None:
        out["is_error"] = r.is_error
    if r.cache:
        out["cache_control"] = _cache_control(r.cache)
    return out




def _assistant(m: Message, replay: bool, restore: Callable[[list[ToolCall]], str | None] | None,
               signature_for: Callable[[str], str | None] | None) -> list[dict[str, Any]]:
    calls = [b for b in m.content if isinstance(b, ToolCall)]
    blocks: list[dict[str, Any]] = []
    content: list[Block] = list(m.content)
    if replay and calls and restore is not None and not any(isinstance(b, Thinking) for b in content):
        text = restore(calls)
        if text:
            content.insert(0, Thinking(text))
    for b in content:
        if isinstance(b, Thinking):
            if b.redacted:
                blocks.append({"type": "redacted_thinking", "data": b.text})
                continue
            sig = b.signature or (signature_for(b.text) if signature_for is not None else None)
            if not sig and (not replay or not b.text):
                continue
            blocks.append({"type": "thinking", "thinking": b.text, "signature": sig or ""})
        elif isinstance(b, Text):
            if b.text:
                blocks.append(_text(b))
        elif isinstance(b, ToolCall):
            call: dict[str, Any] = {"type": "tool_use", "id": b.id, "name": b.name, "input": c.tool_input(b.arguments)}
            if b.cache:
                call["cache_control"] = _cache_control(b.cache)
            blocks.append(call)
    return blocks


def encode_messages(req: Request, *, replay_reasoning: bool = True,
                    restore: Callable[[list[ToolCall]], str | None] | None = None,
                    signature_for: Callable[[str], str | None] | None = None) -> list[dict[str, Any]]:
    """Canonical messages → Anthropic turns: strictly alternating, tool results first in a user turn,
    mid-conversation system messages as wrapped text in the user turn they sit in."""
    out: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in req.messages:
        if m.role == "system":
            texts = [b for b in m.content if isinstance(b, Text)]
            wrapped = Text(MID_SYSTEM_OPEN + "".join(b.text for b in texts) + MID_SYSTEM_CLOSE,
                           cache=texts[-1].cache if texts else False)
            push("user", [_text(wrapped)])
        elif m.role == "user":
            blocks: list[dict[str, Any]] = []
            for b in m.content:
                if isinstance(b, ToolResult):
                    blocks.append(_tool_result(b))
                elif not isinstance(b, (Thinking, ToolCall)):
                    p = _media(b)
                    if p is not None:
                        blocks.append(p)
            push("user", blocks)
        else:
            push("assistant", _assistant(m, replay_reasoning, restore, signature_for))
    for msg in out:
        if msg["role"] == "user":  # Anthropic wants a turn's tool results before anything else in it
            msg["content"].sort(key=lambda p: p["type"] != "tool_result")
    return out


def _system(texts: list[Text]) -> str | list[dict[str, Any]] | None:
    parts = [t for t in texts if t.text]
    if not parts:
        return None
    if not any(t.cache for t in parts):
        return "\n\n".join(t.text for t in parts)
    return [_text(t) for t in parts]


def _tools(req: Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in req.tools:
        if t.kind == "function":
            tool: dict[str, Any] = {"name": t.name, "input_schema": t.parameters or {"type": "object",
                                                                                      "properties": {}}}
            if t.description:
                tool["description"] = t.description
        elif t.kind == "web_search":
            spec = t.parameters if isinstance(t.parameters.get("type"), str) else {}
            tool = dict(spec) if spec else {"type": "web_search_20250305", "name": t.name or "web_search"}
        else:
            raise UnsupportedContent(f"tool type {t.kind!r} cannot be sent to an Anthropic-protocol upstream")
        if t.cache:
            tool["cache_control"] = _cache_control(t.cache)
        out.append(tool)
    return out


def _breakpoints(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks of an upstream body that carry ``cache_control``, in prompt order
    (tools, system, messages; a tool result's inner blocks before the result itself)."""
    found = [t for t in body.get("tools", ()) if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        found += [b for b in system if "cache_control" in b]
    for m in body["messages"]:
        for b in m["content"]:
            inner = b.get("content")
            if isinstance(inner, list):
                found += [x for x in inner if "cache_control" in x]
            if "cache_control" in b:
                found.append(b)
    return found


def limit_breakpoints(body: dict[str, Any], limit: int = MAX_CACHE_BREAKPOINTS) -> None:
    """Keep at most ``limit`` breakpoints in a body this module built: the oldest extra
    ones go, the latest (the client's moving breakpoint) always stays."""
    marks = _breakpoints(body)
    for b in marks[:max(0, len(marks) - limit)]:
        del b["cache_control"]


def _thinking_config(req: Request, max_tokens: int) -> dict[str, Any] | None:
    if req.thinking is False:
        return {"type": "disabled"}
    if req.thinking is not True:
        return None
    if req.thinking_budget is None:
        return {"type": "adaptive"}
    budget = max(MIN_THINKING_BUDGET, min(req.thinking_budget, max_tokens - 1))
    if budget >= max_tokens:
        return {"type": "adaptive"}  # no room for a fixed budget below max_tokens
    return {"type": "enabled", "budget_tokens": budget}


def encode_request(req: Request, upstream_model: str, *, stream: bool, default_max_tokens: int,
                   replay_reasoning: bool = True,
                   restore: Callable[[list[ToolCall]], str | None] | None = None,
                   signature_for: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """What an Anthropic-protocol upstream receives. Only documented Messages fields are sent:
    no beta fields, no metadata; sampling knobs are left out while thinking is on."""
    max_tokens = req.max_tokens or default_max_tokens
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": max_tokens,
        "messages": encode_messages(req, replay_reasoning=replay_reasoning, restore=restore,
                                    signature_for=signature_for),
    }
    system = _system(req.system)
    if system is not None:
        body["system"] = system
    if stream:
        body["stream"] = True
    thinking = _thinking_config(req, max_tokens)
    if thinking is not None:
        body["thinking"] = thinking
    if req.effort and req.thinking is not False:
        body["output_config"] = {"effort": req.effort}
    if req.thinking is not True:  # with thinking on, Anthropic rejects custom sampling and DeepSeek ignores it
        for key in ("temperature", "top_p", "top_k"):
            v = getattr(req, key)
            if v is not None:
                body[key] = v
    if req.stop:
        body["stop_sequences"] = req.stop
    if req.tools:
        body["tools"] = _tools(req)
        tc = req.tool_choice
        choice: dict[str, Any] | None = None
        if tc is not None:
            modes: dict[str, dict[str, Any]] = {"auto": {"type": "auto"}, "required": {"type": "any"},
                                                "none": {"type": "none"}, "tool": {"type": "tool", "name": tc.name}}
            choice = modes[tc.mode]
        if req.parallel_tool_calls is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            body["tool_choice"] = choice
    limit_breakpoints(body)
    return body

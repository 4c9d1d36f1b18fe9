"""The one way a :class:`RouteInput` is built: :func:`route_input` over a canonical request.

Serving calls it on the request the client's codec decoded; training and evaluation
(``bench/router``) and ``stepplan router score`` call it too, through
:func:`route_input_from_openai_messages`, which reads OpenAI chat ``messages`` into a canonical
request the way the OpenAI codec does (system prefix, tool results as ``user`` messages, text
parts as text blocks) but without its validation, since training data is not a client request.
``tests/routing/test_route_input.py`` checks that both give the same input on real captures and
on the router's dev data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..protocols.canonical import Block, Message, Request, Text, Thinking, Tool, ToolCall, ToolResult
from .types import RouteInput

_TEXT_PARTS = (None, "text", "input_text", "output_text")


def route_input(req: Request, input_tokens: int | None = None) -> RouteInput:
    """The router's view of a canonical request: text turns, tools and hints."""
    turns: list[tuple[str, str]] = [("system", t.text) for t in req.system]
    for m in req.messages:
        texts: list[str] = []
        role: str = m.role
        for b in m.content:
            if isinstance(b, Text):
                texts.append(b.text)
            elif isinstance(b, ToolResult):
                role = "tool"
                texts.extend(x.text for x in b.content if isinstance(x, Text))
        turns.append((role, "\n".join(texts)))
    return RouteInput(turns=turns, n_tools=len(req.tools), effort=req.effort, thinking=req.thinking,
                      input_tokens=input_tokens)


def _blocks(content: Any) -> list[Block]:
    """Text blocks of an OpenAI/Anthropic ``content`` value (str, None, a part or a list of parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, Iterable):
        return []
    out: list[Block] = []
    for part in content:
        if isinstance(part, str):
            out.append(Text(part))
        elif isinstance(part, Mapping):
            kind = part.get("type")
            if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
                out.append(Text(part["text"]))
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                out.append(Text(part["refusal"]))
            elif kind == "tool_result":
                out.append(ToolResult(str(part.get("tool_use_id") or ""), _blocks(part.get("content"))))
    return out


def request_from_openai_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None, *,
                                 effort: str | None = None, thinking: bool | None = None) -> Request:
    """OpenAI chat ``messages`` → a canonical request, shaped as the OpenAI codec shapes it."""
    system: list[Text] = []
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        role = str(m.get("role") or "user").lower()
        if role in ("system", "developer"):
            text = "".join(b.text for b in _blocks(m.get("content")) if isinstance(b, Text))
            if out:
                out.append(Message("system", [Text(text)]))
            else:
                system.append(Text(text))
        elif role == "assistant":
            blocks: list[Block] = []
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                blocks.append(Thinking(reasoning))
            blocks.extend(_blocks(m.get("content")))
            calls = m.get("tool_calls")
            for tc in calls if isinstance(calls, list) else ():
                fn = tc.get("function") if isinstance(tc, Mapping) else None
                fn = fn if isinstance(fn, Mapping) else {}
                blocks.append(ToolCall(str(tc.get("id") or "") if isinstance(tc, Mapping) else "",
                                       str(fn.get("name") or ""), str(fn.get("arguments") or "{}")))
            out.append(Message("assistant", blocks))
        elif role in ("tool", "function"):
            result = ToolResult(str(m.get("tool_call_id") or m.get("name") or ""), _blocks(m.get("content")))
            prev = out[-1] if out else None
            if prev is not None and prev.role == "user" and prev.content and all(
                    isinstance(b, ToolResult) for b in prev.content):
                prev.content.append(result)
            else:
                out.append(Message("user", [result]))
        else:  # user, and any role the codec would refuse
            out.append(Message("user", _blocks(m.get("content"))))
    return Request(model="", messages=out, system=system,
                   tools=[Tool(f"tool{i}", None, {}) for i in range(len(tools or ()))],
                   effort=effort, thinking=thinking)


def route_input_from_openai_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None = None,
    *,
    effort: str | None = None,
    thinking: bool | None = None,
    input_tokens: int | None = None,
) -> RouteInput:
    """:func:`route_input` of OpenAI Chat Completions ``messages`` (training and evaluation data).

    ``content`` may be a string, ``None`` or a list of parts; only text parts are kept.
    Assistant ``tool_calls`` arguments are not scored, but a turn that only made tool calls is
    still recorded (with empty text) so the turn count is right.
    """
    req = request_from_openai_messages(messages, tools, effort=effort, thinking=thinking)
    return route_input(req, input_tokens)

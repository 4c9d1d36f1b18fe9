"""Canonical request → what the embedded chat model is given.

The embedded model reads plain chat-template text, so everything it cannot take
natively is rendered as text: tool results and earlier tool calls become short
bracketed notes, media become placeholders (the model has no eyes or ears), and
thinking is dropped. Tools are only used when the client *forces* a tool call: then
the output is grammar-constrained to the tool's JSON schema (see :class:`ToolPlan`).
Nothing here needs the model; this module is pure and cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from ..protocols.canonical import (
    Audio,
    Block,
    Document,
    Image,
    Request,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolResult,
    Video,
)

IMAGE_PLACEHOLDER = "[image omitted: the local model cannot see images]"
VIDEO_PLACEHOLDER = "[video omitted: the local model cannot watch videos]"
AUDIO_PLACEHOLDER = "[audio omitted: the local model cannot hear audio]"
DOCUMENT_PLACEHOLDER = "[document omitted: the local model can only read text]"


def block_text(b: Block) -> str | None:
    """The text the model sees for one block; None when the block is dropped."""
    if isinstance(b, Text):
        return b.text
    if isinstance(b, Thinking):
        return None
    if isinstance(b, Image):
        return IMAGE_PLACEHOLDER
    if isinstance(b, Video):
        return VIDEO_PLACEHOLDER
    if isinstance(b, Audio):
        return AUDIO_PLACEHOLDER
    if isinstance(b, Document):
        return b.text if b.text is not None else DOCUMENT_PLACEHOLDER
    if isinstance(b, ToolCall):
        return f"[called tool {b.name} with arguments {b.arguments}]"
    if isinstance(b, ToolResult):
        inner = "\n".join(t for t in (block_text(x) for x in b.content) if t is not None)
        label = "tool error" if b.is_error else "tool result"
        return f"[{label} for call {b.tool_call_id}]\n{inner}"
    return None


def _join(blocks: list[Block]) -> str:
    return "\n".join(t for t in (block_text(b) for b in blocks) if t is not None)


@dataclass(slots=True)
class ToolPlan:
    """How a forced tool call is produced: the JSON schema the output must match.

    ``name`` is set when exactly one tool is possible (the output is its arguments);
    otherwise the output is ``{"name": ..., "arguments": {...}}`` over ``names``.
    """

    schema: dict[str, Any]
    note: str
    name: str | None
    names: tuple[str, ...] = ()


def _params(t: Tool) -> dict[str, Any]:
    p = t.parameters if isinstance(t.parameters, dict) and t.parameters else {"type": "object"}
    return {k: v for k, v in p.items() if k != "$schema"}


def _describe(t: Tool) -> str:
    desc = f": {t.description}" if t.description else ""
    return f"- {t.name}{desc}\n  parameters (JSON schema): {json.dumps(_params(t), ensure_ascii=False)}"


def tool_plan(req: Request) -> ToolPlan | None:
    """A plan when the request forces a tool call; None when the model answers in text.

    ``auto`` is answered in text: a 135M-parameter model does not decide well when to
    call a tool, and the tool list would crowd its small context window.
    """
    choice = req.tool_choice
    tools = [t for t in req.tools if t.kind == "function"]
    if choice is None or choice.mode in ("auto", "none") or not tools:
        return None
    if choice.mode == "tool":
        tool = next((t for t in tools if t.name == choice.name), None)
        if tool is None:
            raise InvalidRequest(f"tool_choice names tool '{choice.name}', which is not among the request's tools",
                                 param="tool_choice")
        tools = [tool]
    if len(tools) == 1:
        t = tools[0]
        note = (f"Call the function {t.name} now. Reply only with the JSON object of its arguments.\n"
                f"{_describe(t)}")
        return ToolPlan(_params(t), note, t.name)
    schema = {"anyOf": [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": _params(t)},
         "required": ["name", "arguments"]}
        for t in tools
    ]}
    note = ("Call one of these functions now. Reply only with a JSON object "
            '{"name": <function name>, "arguments": {...}}.\n' + "\n".join(_describe(t) for t in tools))
    return ToolPlan(schema, note, None, tuple(t.name for t in tools))


def response_schema(req: Request) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for ({} means any JSON object)."""
    rf = req.response_format
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return {"type": "object"}
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        return schema if isinstance(schema, dict) and schema else {"type": "object"}
    return None


def chat_messages(req: Request, plan: ToolPlan | None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(leading system messages, conversation turns) in chat-template form.

    Turns keep their roles (a mid-conversation system message stays a system turn); a
    turn whose blocks all drop out (an assistant turn that was only thinking) is skipped.
    """
    system = "\n".join(t.text for t in req.system)
    if plan is not None:
        system = f"{system}\n\n{plan.note}" if system else plan.note
    head = [{"role": "system", "content": system}] if system else []
    turns: list[dict[str, str]] = []
    for m in req.messages:
        content = _join(m.content)
        if not content and m.role != "user":
            continue
        turns.append({"role": m.role, "content": content})
    return head, turns


def keep_from(turns: list[dict[str, str]]) -> int:
    """Index of the last user turn: truncation never drops it or anything after it."""
    for i in range(len(turns) - 1, -1, -1):
        if turns[i]["role"] == "user":
            return i
    return max(0, len(turns) - 1)

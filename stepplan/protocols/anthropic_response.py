"""Anthropic Messages responses and streams: wire JSON ⇄ canonical.

Upstream side: :func:`decode_response` and :class:`StreamDecoder` (SSE events →
canonical events). Client side: :func:`encode_response` and :class:`StreamEncoder`
(canonical events → SSE bytes). Usage extraction is part of this contract:
Anthropic's ``input_tokens`` *excludes* cached tokens (``cache_read_input_tokens``
and ``cache_creation_input_tokens``, the latter possibly split into 5m/1h parts), so
it maps onto canonical ``Usage.input`` as is; nothing is ever subtracted.

Thinking text that leaves for a client is signed by the gateway; when the upstream
signed it too, its signature is carried inside ours (see :class:`~stepplan.reasoning.Signer`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from ._check import tool_input
from ._usage import BadCount, count, defect
from .canonical import (
    Block,
    Event,
    Finish,
    RedactedThinking,
    Response,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ThinkingSignature,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)

if TYPE_CHECKING:
    from ..reasoning import SignatureAccumulator, Signer

log = logging.getLogger("stepplan.anthropic")

STOP_IN: dict[str, StopReason] = {
    "end_turn": "end_turn", "max_tokens": "max_tokens", "tool_use": "tool_use", "stop_sequence": "stop_sequence",
    "refusal": "content_filter", "pause_turn": "end_turn", "model_context_window_exceeded": "max_tokens",
}
STOP_OUT: dict[str, str] = {
    "end_turn": "end_turn", "max_tokens": "max_tokens", "tool_use": "tool_use", "stop_sequence": "stop_sequence",
    "content_filter": "refusal", "error": "end_turn",
}


# ============================================================================ usage
def usage_from_anthropic(u: Any, prev: Usage | None = None, final: bool = True) -> Usage | None:
    """Anthropic usage → canonical. Fields absent from ``u`` keep their value from ``prev``
    (a stream's ``message_delta`` often carries only ``output_tokens``). ``final=False`` for
    ``message_start``, whose ``output_tokens`` is a placeholder. Invalid counts (negative,
    fractional, absurd) make the usage unknown (``known=False``): the call is counted locally."""
    if not isinstance(u, dict):
        return prev
    if prev is not None and not prev.known:
        return prev  # an earlier invalid count already made this call's usage unknown
    out = replace(prev) if prev is not None else Usage()
    try:
        if u.get("input_tokens") is not None:
            out.input = count(u, "input_tokens")
        if u.get("cache_read_input_tokens") is not None:
            out.cache_read = count(u, "cache_read_input_tokens")
        split = u.get("cache_creation")
        if u.get("cache_creation_input_tokens") is not None or isinstance(split, dict):
            total = count(u, "cache_creation_input_tokens")
            if isinstance(split, dict):  # {"ephemeral_5m_input_tokens": n, "ephemeral_1h_input_tokens": m}
                total = max(total, sum(count(split, k) for k in split))
            out.cache_write = total
        if u.get("output_tokens") is not None:
            out.output = count(u, "output_tokens")
    except BadCount as exc:
        defect("anthropic", exc, u)
        return Usage()
    out.known = True
    out.final = final
    return out


def usage_to_anthropic(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": max(0, u.input),
        "cache_creation_input_tokens": max(0, u.cache_write),
        "cache_read_input_tokens": max(0, u.cache_read),
        "output_tokens": max(0, u.output),
    }


# ============================================================================ upstream → canonical
def _args(v: Any) -> str:
    return orjson.dumps(v if isinstance(v, dict) else {}).decode()


def decode_response(body: Any) -> Response:
    if not isinstance(body, dict) or body.get("type") == "error" or not isinstance(body.get("content"), list):
        raise ValueError("upstream response is not a message")
    blocks: list[Block] = []
    for b in body["content"]:
        if not isinstance(b, dict):
            continue
        kind = b.get("type")
        if kind == "text" and isinstance(b.get("text"), str):
            blocks.append(Text(b["text"]))
        elif kind == "thinking":
            sig = b.get("signature")
            blocks.append(Thinking(str(b.get("thinking") or ""), signature=sig if isinstance(sig, str) and sig
                                   else None))
        elif kind == "redacted_thinking":
            blocks.append(Thinking(str(b.get("data") or ""), redacted=True))
        elif kind == "tool_use":
            blocks.append(ToolCall(id=str(b.get("id") or ""), name=str(b.get("name") or ""),
                                   arguments=_args(b.get("input"))))
    sr = body.get("stop_reason")
    reason: StopReason = STOP_IN.get(sr, "end_turn") if isinstance(sr, str) else "end_turn"
    if reason == "end_turn" and any(isinstance(b, ToolCall) for b in blocks):
        reason = "tool_use"
    seq = body.get("stop_sequence") if reason == "stop_sequence" else None
    return Response(id=str(body.get("id") or ""), model=str(body.get("model") or ""), content=blocks,
                    stop_reason=reason, stop_sequence=seq if isinstance(seq, str) else None,
                    usage=usage_from_anthropic(body.get("usage")) or Usage())


class StreamDecoder:
    """Upstream SSE event payloads → canonical events. One per upstream call.

    Block indices are the upstream's; tool calls get their own 0, 1, … ordinals so
    parallel calls keep separate identities whatever other blocks sit between them.
    """

    __slots__ = ("blocks", "done", "finish", "tools", "usage")

    def __init__(self) -> None:
        self.blocks: dict[int, list[Any]] = {}  # upstream index → [kind, tool ordinal, saw arguments]
        self.tools = 0
        self.usage: Usage | None = None
        self.finish: Finish | None = None
        self.done = False  # message_stop seen

    def feed(self, data: Any) -> list[Event]:
        """One upstream event. Raises ValueError for a payload that is not a Messages stream
        event (not an object, or without a ``type``); unknown event types are skipped."""
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ValueError(f"stream event is not a Messages event object: {str(data)[:80]}")
        kind = data.get("type")
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._start(data)
        if kind == "content_block_stop":
            st = self.blocks.get(data.get("index", -1))
            if st is not None and st[0] == "tool_use" and not st[2]:
                return [ToolCallDelta(st[1], arguments="{}")]  # a call without arguments still has an input
            return []
        if kind == "message_start":
            msg = data.get("message") or {}
            if not isinstance(msg, dict):
                raise ValueError("message_start.message is not an object")
            self.usage = usage_from_anthropic(msg.get("usage"), self.usage, final=False)
            return [UsageUpdate(self.usage)] if self.usage is not None else []
        if kind == "message_delta":
            delta = data.get("delta") or {}
            sr = delta.get("stop_reason", data.get("stop_reason"))  # StepFun documents it at the top level
            if isinstance(sr, str):
                reason: StopReason = STOP_IN.get(sr, "end_turn")
                if reason == "end_turn" and self.tools:
                    reason = "tool_use"
                seq = delta.get("stop_sequence")
                self.finish = Finish(reason, seq if reason == "stop_sequence" and isinstance(seq, str) else None)
            if data.get("usage") is not None:
                self.usage = usage_from_anthropic(data["usage"], self.usage)
                if self.usage is not None:
                    return [UsageUpdate(self.usage)]
            return []
        if kind == "message_stop":
            self.done = True
        return []

    def _start(self, data: dict[str, Any]) -> list[Event]:
        cb = data.get("content_block") or {}
        kind = cb.get("type")
        index = data.get("index", len(self.blocks))
        if kind == "tool_use":
            ordinal = self.tools
            self.tools += 1
            inp = cb.get("input")
            args = _args(inp) if isinstance(inp, dict) and inp else ""
            self.blocks[index] = ["tool_use", ordinal, bool(args)]
            return [ToolCallDelta(ordinal, str(cb.get("id") or f"toolu_{os.urandom(12).hex()}"),
                                  str(cb.get("name") or ""), args)]
        self.blocks[index] = [kind, -1, False]
        events: list[Event] = []
        if kind == "text" and cb.get("text"):
            events.append(TextDelta(cb["text"]))
        elif kind == "thinking":
            if cb.get("thinking"):
                events.append(ThinkingDelta(cb["thinking"]))
            if cb.get("signature"):
                events.append(ThinkingSignature(cb["signature"]))
        elif kind == "redacted_thinking" and cb.get("data"):
            events.append(RedactedThinking(str(cb["data"])))
        return events

    def _delta(self, data: dict[str, Any]) -> list[Event]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if kind == "thinking_delta":
            text = delta.get("thinking")
            return [ThinkingDelta(text)] if isinstance(text, str) and text else []
        if kind == "signature_delta":
            sig = delta.get("signature")
            return [ThinkingSignature(sig)] if isinstance(sig, str) and sig else []
        if kind == "input_json_delta":
            st = self.blocks.get(data.get("index", -1))
            part = delta.get("partial_json")
            if st is None or st[0] != "tool_use" or not isinstance(part, str) or not part:
                return []
            st[2] = True
            return [ToolCallDelta(st[1], arguments=part)]
        return []

    def close(self) -> list[Event]:
        """Events to emit when the upstream stream has ended."""
        return [self.finish or Finish("end_turn")]


# ============================================================================ canonical → client


def new_tool_id() -> str:
    return f"toolu_{os.urandom(12).hex()}"


def encode_response(resp: Response, model: str, id: str, signer: Signer) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for b in resp.content:
        if isinstance(b, Thinking):
            if b.redacted:
                content.append({"type": "redacted_thinking", "data": b.text})
            else:
                content.append({"type": "thinking", "thinking": b.text, "signature": signer.sign(b.text, b.signature)})
        elif isinstance(b, Text):
            if b.text:
                content.append({"type": "text", "text": b.text})
        elif isinstance(b, ToolCall):
            content.append({"type": "tool_use", "id": b.id or new_tool_id(), "name": b.name,
                            "input": tool_input(b.arguments)})
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_OUT[resp.stop_reason],
        "stop_sequence": resp.stop_sequence if resp.stop_reason == "stop_sequence" else None,
        "usage": usage_to_anthropic(resp.usage),
    }


_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_END = b"}\n\n"
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """Canonical events → Anthropic SSE bytes, as they arrive. One per response.

    The state machine: ``start`` (message_start, ping) → for each block, in index order,
    ``content_block_start`` → deltas → ``content_block_stop``; at most one block is
    open, and a block holds one kind of content (thinking, text, one tool call, or an
    upstream's redacted_thinking, passed on whole).
    A thinking block's signature goes out as its last delta, just before it closes.
    ``end`` sends ``message_delta`` (stop reason, final usage) and ``message_stop``;
    it comes after settlement, so the usage is the one that was billed.
    """

    __slots__ = ("ended", "id", "index", "kind", "model", "sig", "signer", "started", "stop", "tool", "tool_blocks",
                 "upstream_sig", "usage")

    def __init__(self, id: str, model: str, signer: Signer):
        self.id = id
        self.model = model
        self.signer = signer
        self.index = -1  # the open block's index, or the last one's
        self.kind: str | None = None  # open block: "thinking" | "text" | "tool_use" | None
        self.tool = -1  # canonical tool index of the open tool_use block
        self.tool_blocks: dict[int, int] = {}  # canonical tool index → block index
        self.sig: SignatureAccumulator | None = None
        self.upstream_sig: str | None = None
        self.usage: Usage | None = None
        self.stop: Finish | None = None
        self.started = False
        self.ended = False

    # ---------------------------------------------------------------- framing
    def start(self, first: Event | None = None) -> bytes:
        """``message_start`` (with input usage when the first event already carries it) and a ping."""
        self.started = True
        if isinstance(first, UsageUpdate):
            self.usage = first.usage
        u = usage_to_anthropic(self.usage or Usage())
        msg: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                               "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": u}
        return _frame("message_start", {"type": "message_start", "message": msg}) + PING

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.kind = kind
        return out + _START + str(self.index).encode() + b',"content_block":' + orjson.dumps(block) + _END

    def _close(self) -> bytes:
        if self.kind is None:
            return b""
        out = b""
        idx = str(self.index).encode()
        if self.kind == "thinking" and self.sig is not None:
            sig = self.sig.signature(self.upstream_sig)
            out = (_DELTA + idx + b',"delta":{"type":"signature_delta","signature":' + orjson.dumps(sig) + b"}"
                   + _END)
            self.sig = None
            self.upstream_sig = None
        self.kind = None
        return out + _STOP + idx + _END

    def _delta(self, kind: bytes, field: bytes, value: str) -> bytes:
        return (_DELTA + str(self.index).encode() + b',"delta":{"type":"' + kind + b'","' + field + b'":'
                + orjson.dumps(value) + b"}" + _END)

    def _thinking_block(self) -> bytes:
        # A new thinking block when none is open, or when the open one already got its upstream signature.
        if self.kind == "thinking" and self.upstream_sig is None:
            return b""
        out = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self.sig = self.signer.accumulator()
        return out

    # ---------------------------------------------------------------- events
    def feed(self, ev: Event) -> bytes:
        if isinstance(ev, TextDelta):
            if not ev.text:
                return b""
            out = b"" if self.kind == "text" else self._open("text", {"type": "text", "text": ""})
            return out + self._delta(b"text_delta", b"text", ev.text)
        if isinstance(ev, ThinkingDelta):
            if not ev.text:
                return b""
            out = self._thinking_block()
            assert self.sig is not None
            self.sig.update(ev.text)
            return out + self._delta(b"thinking_delta", b"thinking", ev.text)
        if isinstance(ev, ThinkingSignature):
            out = self._thinking_block()
            self.upstream_sig = ev.signature or None
            return out
        if isinstance(ev, ToolCallDelta):
            return self._tool(ev)
        if isinstance(ev, UsageUpdate):
            self.usage = ev.usage
            return b""
        if isinstance(ev, Finish):
            self.stop = ev
            return self._close()
        if isinstance(ev, RedactedThinking):  # passed on whole, as it came: the client echoes it back
            return self._open("redacted_thinking", {"type": "redacted_thinking", "data": ev.data})
        return b""

    def _tool(self, ev: ToolCallDelta) -> bytes:
        out = b""
        if ev.index not in self.tool_blocks:
            out = self._open("tool_use", {"type": "tool_use", "id": ev.id or new_tool_id(), "name": ev.name or "",
                                          "input": {}})
            self.tool = ev.index
            self.tool_blocks[ev.index] = self.index
        elif self.kind != "tool_use" or self.tool != ev.index:
            # Only an upstream that interleaves parallel calls' fragments gets here; a closed
            # block cannot be reopened in this protocol.
            log.warning("dropping a late argument fragment for tool call %d (upstream interleaved calls)", ev.index)
            return b""
        if ev.arguments:
            out += self._delta(b"input_json_delta", b"partial_json", ev.arguments)
        return out

    def end(self, usage: Usage | None = None) -> bytes:
        """``message_delta`` and ``message_stop``; ``usage`` overrides what the stream reported."""
        if self.ended:
            return b""
        self.ended = True
        out = self._close()
        stop = self.stop or Finish("end_turn")
        u = usage_to_anthropic(usage or self.usage or Usage())
        delta = {"stop_reason": STOP_OUT[stop.reason],
                 "stop_sequence": stop.stop_sequence if stop.reason == "stop_sequence" else None}
        return out + _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": u}) + MESSAGE_STOP

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        """An ``error`` event: a failure after the first byte is never a silent cut."""
        return _frame("error", {"type": "error", "error": body.get("error", body)})

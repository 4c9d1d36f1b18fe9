"""OpenAI Responses streams: canonical events → Responses SSE events, as they arrive.

:class:`StreamEncoder` is an explicit state machine, one per response. Its state is the kind of
output item that is open: ``idle``, ``reasoning``, ``message`` or ``tools``. An event of another
kind closes what is open and opens its own item; parallel tool calls stay open together until
something else comes (or the model finishes), so an upstream that interleaves their argument
fragments is passed on exactly. Every event carries the next ``sequence_number``.

    start       response.created, response.in_progress
    reasoning   output_item.added → [reasoning_summary_part.added → reasoning_summary_text.delta…
                → reasoning_summary_text.done → reasoning_summary_part.done] → output_item.done
    message     output_item.added → content_part.added → output_text.delta… → output_text.done
                → content_part.done → output_item.done
    function    output_item.added → function_call_arguments.delta… → function_call_arguments.done
                → output_item.done
    custom      output_item.added → custom_tool_call_input.delta… → custom_tool_call_input.done
                → output_item.done   (the raw input is the string inside the function's JSON arguments
                                      ``{"input": "…"}``: :class:`RawInput` unescapes it as it streams)
    end         response.completed | response.incomplete   (after settlement: the billed usage)
    error       error → response.failed

Summary parts are streamed only when the client set ``reasoning.summary``; a thinking block's
upstream signature is sealed into its item's ``encrypted_content`` when the item closes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .canonical import (
    Event,
    Finish,
    RedactedThinking,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)
from .responses_request import CUSTOM_INPUT
from .responses_response import Answer, status_of

log = logging.getLogger("stepplan.responses")

_HEAD = re.compile(r'\s*\{\s*"' + CUSTOM_INPUT + r'"\s*:\s*"')
_HEAD_TEXT = '{"' + CUSTOM_INPUT + '":"'
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class RawInput:
    """Streams the raw input of a custom tool call out of the function arguments the model writes,
    ``{"input": "<JSON string>"}``, unescaping the string as its fragments arrive. Arguments of any
    other form give no deltas; the call's final input (:func:`custom_input`) is then sent whole."""

    __slots__ = ("buf", "pos", "state")

    def __init__(self) -> None:
        self.buf = ""
        self.pos = 0
        self.state = "head"  # head → string → end, or other (not the expected form)

    def feed(self, fragment: str) -> str:
        self.buf += fragment
        if self.state == "head":
            m = _HEAD.match(self.buf)
            if m is None:
                if not _HEAD_TEXT.startswith("".join(self.buf.split())):
                    self.state = "other"
                return ""
            self.state, self.pos = "string", m.end()
        if self.state != "string":
            return ""
        out: list[str] = []
        buf, i, n = self.buf, self.pos, len(self.buf)
        while i < n:
            ch = buf[i]
            if ch == '"':
                self.state = "end"
                i += 1
                break
            if ch != "\\":
                j = i + 1
                while j < n and buf[j] not in '"\\':
                    j += 1
                out.append(buf[i:j])
                i = j
                continue
            if i + 1 >= n:
                break  # the escape continues in the next fragment
            esc = buf[i + 1]
            if esc != "u":
                out.append(_ESCAPES.get(esc, esc))
                i += 2
                continue
            if i + 6 > n:
                break
            code = int(buf[i + 2:i + 6], 16) if re.fullmatch(r"[0-9a-fA-F]{4}", buf[i + 2:i + 6]) else 0xFFFD
            if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for its second half
                if i + 12 > n:
                    break
                low = buf[i + 8:i + 12]
                if (buf[i + 6:i + 8] == "\\u" and re.fullmatch(r"[0-9a-fA-F]{4}", low)
                        and 0xDC00 <= int(low, 16) < 0xE000):
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    i += 6
            out.append(chr(code) if code < 0xD800 or code > 0xDFFF else "\ufffd")
            i += 6
        self.pos = i
        return "".join(out)


@dataclass(slots=True)
class _Open:
    """An output item being streamed."""

    id: str
    index: int  # output_index
    parts: list[str] = field(default_factory=list)
    signature: str | None = None  # reasoning: the upstream's signature, once it came
    summary: bool = False  # reasoning: a summary part was opened
    call_id: str = ""  # tool calls
    name: str = ""  # tool calls: the exposed name
    custom: RawInput | None = None  # custom tool calls: the raw input being unwrapped
    sent: list[str] = field(default_factory=list)  # custom tool calls: the raw input sent so far


class StreamEncoder:
    __slots__ = ("answer", "calls", "closed_calls", "final", "item", "output", "seq", "state", "stop", "usage")

    def __init__(self, answer: Answer):
        self.answer = answer
        self.seq = 0
        self.state = "idle"  # idle | reasoning | message | tools
        self.item: _Open | None = None  # the open reasoning or message item
        self.calls: dict[int, _Open] = {}  # canonical tool index → open call
        self.closed_calls: set[int] = set()
        self.output: list[dict[str, Any]] = []  # finished items, full (sealed), in output_index order
        self.usage: Usage | None = None
        self.stop: Finish | None = None
        self.final: dict[str, Any] | None = None  # the stored form of the finished response

    # ---------------------------------------------------------------- framing
    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data["sequence_number"] = self.seq
        data["type"] = kind  # last: the stream then ends in '"type":"response.completed"}'

        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _snapshot(self, status: str) -> dict[str, Any]:
        return self.answer.response(status, [], None)

    def start(self, first: Event | None = None) -> bytes:
        """``response.created`` and ``response.in_progress`` (``first`` is fed separately)."""
        return (self._event("response.created", {"response": self._snapshot("in_progress")})
                + self._event("response.in_progress", {"response": self._snapshot("in_progress")}))

    def _added(self, item: dict[str, Any], index: int) -> bytes:
        return self._event("response.output_item.added", {"output_index": index, "item": item})

    def _done(self, item: dict[str, Any], index: int) -> bytes:
        self.output.append(item)
        return self._event("response.output_item.done", {"output_index": index,
                                                          "item": self.answer.client_item(item)})

    def _next_index(self) -> int:
        return len(self.output) + (1 if self.item is not None else 0) + len(self.calls)

    # ---------------------------------------------------------------- transitions
    def _close(self) -> bytes:
        if self.state == "reasoning":
            out = self._close_reasoning()
        elif self.state == "message":
            out = self._close_message()
        elif self.state == "tools":
            out = b"".join(self._close_call(i) for i in list(self.calls))
        else:
            out = b""
        self.state = "idle"
        return out

    def _open_reasoning(self) -> bytes:
        out = self._close()
        self.item = _Open(self.answer.item_id("rs"), self._next_index())
        self.state = "reasoning"
        return out + self._added({"id": self.item.id, "type": "reasoning", "summary": []}, self.item.index)

    def _close_reasoning(self) -> bytes:
        it = self.item
        assert it is not None
        self.item = None
        text = "".join(it.parts)
        out = b""
        if it.summary:
            where = {"item_id": it.id, "output_index": it.index, "summary_index": 0}
            out = (self._event("response.reasoning_summary_text.done", {**where, "text": text})
                   + self._event("response.reasoning_summary_part.done",
                                 {**where, "part": {"type": "summary_text", "text": text}}))
        return out + self._done(self.answer.reasoning_item(it.id, text, it.signature), it.index)

    def _open_message(self) -> bytes:
        out = self._close()
        self.item = _Open(self.answer.item_id("msg"), self._next_index())
        self.state = "message"
        item = {"id": self.item.id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (out + self._added(item, self.item.index)
                + self._event("response.content_part.added", {"item_id": self.item.id, "output_index": self.item.index,
                                                              "content_index": 0, "part": part}))

    def _close_message(self) -> bytes:
        it = self.item
        assert it is not None
        self.item = None
        text = "".join(it.parts)
        status = status_of(self.stop.reason)[0] if self.stop is not None else "completed"
        where = {"item_id": it.id, "output_index": it.index, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return (self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + self._event("response.content_part.done", {**where, "part": part})
                + self._done(self.answer.message_item(it.id, text, status), it.index))

    def _open_call(self, ev: ToolCallDelta) -> bytes:
        out = b"" if self.state == "tools" else self._close()
        self.state = "tools"
        name = ev.name or ""
        tool = self.answer.shape.client_tool(name)
        call = _Open(self.answer.call_item_id(name), self._next_index(), call_id=self.answer.call_id(ev.id),
                     name=name, custom=RawInput() if tool.custom else None)
        self.calls[ev.index] = call
        item = self.answer.call_item(call.id, call.call_id, name, "", status="in_progress")
        return out + self._added(item, call.index)

    def _close_call(self, index: int) -> bytes:
        call = self.calls.pop(index)
        self.closed_calls.add(index)
        where = {"item_id": call.id, "output_index": call.index}
        out = b""
        if not call.parts:  # a call without arguments still has an input
            call.parts.append("{}")
            if not call.custom:
                out = self._event("response.function_call_arguments.delta", {**where, "delta": "{}"})
        item = self.answer.call_item(call.id, call.call_id, call.name, "".join(call.parts))
        if call.custom:
            raw = item["input"]
            sent = "".join(call.sent)
            rest = raw[len(sent):] if raw.startswith(sent) else ""  # (an odd form: the done event has it right)
            if rest:
                out += self._event("response.custom_tool_call_input.delta", {**where, "delta": rest})
            out += self._event("response.custom_tool_call_input.done", {**where, "input": raw})
        else:
            out += self._event("response.function_call_arguments.done", {**where, "arguments": item["arguments"]})
        return out + self._done(item, call.index)

    # ---------------------------------------------------------------- events
    def feed(self, ev: Event) -> bytes:
        if isinstance(ev, TextDelta):
            if not ev.text:
                return b""
            out = b"" if self.state == "message" else self._open_message()
            assert self.item is not None
            self.item.parts.append(ev.text)
            return out + self._event("response.output_text.delta", {
                "item_id": self.item.id, "output_index": self.item.index, "content_index": 0, "delta": ev.text,
                "logprobs": []})
        if isinstance(ev, ThinkingDelta):
            if not ev.text:
                return b""
            out = b""
            if self.state != "reasoning" or (self.item is not None and self.item.signature is not None):
                out = self._open_reasoning()  # a new block once the open one got its upstream signature
            it = self.item
            assert it is not None
            it.parts.append(ev.text)
            if not self.answer.shape.summary:
                return out
            where = {"item_id": it.id, "output_index": it.index, "summary_index": 0}
            if not it.summary:
                it.summary = True
                out += self._event("response.reasoning_summary_part.added",
                                   {**where, "part": {"type": "summary_text", "text": ""}})
            return out + self._event("response.reasoning_summary_text.delta", {**where, "delta": ev.text})
        if isinstance(ev, ToolCallDelta):
            return self._tool(ev)
        if isinstance(ev, UsageUpdate):
            self.usage = ev.usage
            return b""
        if isinstance(ev, ThinkingSignature):
            out = b""
            if self.state != "reasoning" or (self.item is not None and self.item.signature is not None):
                out = self._open_reasoning()
            assert self.item is not None
            self.item.signature = ev.signature or None
            return out
        if isinstance(ev, RedactedThinking):  # opaque upstream reasoning: one whole item, sealed
            out = self._close()
            index = self._next_index()
            item = self.answer.reasoning_item(self.answer.item_id("rs"), ev.data, redacted=True)
            return out + self._added({"id": item["id"], "type": "reasoning", "summary": []}, index) + self._done(
                item, index)
        if isinstance(ev, Finish):
            self.stop = ev
            return self._close()
        return b""

    def _tool(self, ev: ToolCallDelta) -> bytes:
        out = b""
        if ev.index not in self.calls:
            if ev.index in self.closed_calls:
                # Only an upstream that sends a call's fragments after other content gets here; a
                # finished item cannot be reopened.
                log.warning("dropping a late argument fragment for tool call %d", ev.index)
                return b""
            out = self._open_call(ev)
        call = self.calls[ev.index]
        if ev.arguments:
            call.parts.append(ev.arguments)
            where = {"item_id": call.id, "output_index": call.index}
            if call.custom is None:
                out += self._event("response.function_call_arguments.delta", {**where, "delta": ev.arguments})
            else:
                raw = call.custom.feed(ev.arguments)
                if raw:
                    call.sent.append(raw)
                    out += self._event("response.custom_tool_call_input.delta", {**where, "delta": raw})
        return out

    def end(self, billed: Usage | None = None) -> bytes:
        """The terminal event, after settlement: ``usage`` is what the call was billed for."""
        out = self._close()
        status, incomplete = status_of(self.stop.reason) if self.stop is not None else ("completed", None)
        usage = billed or self.usage or Usage()
        self.final = self.answer.response(status, self.output, usage, incomplete=incomplete, client=False)
        body = self.answer.response(status, self.output, usage, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, {"response": body})

    def error(self, body: dict[str, Any]) -> bytes:
        """A failure after the first byte: an ``error`` event, then ``response.failed``."""
        err = body.get("error", body)
        code, message = err.get("code"), err.get("message") or "error"
        # response.error.code is one of OpenAI's few; the StepFun code leads the message and is the error event's code
        failed = self.answer.response("failed", self.output, self.usage, error={
            "code": "rate_limit_exceeded" if code == "rate_limit_exceeded" else "server_error",
            "message": f"{code}: {message}" if code else message})
        return (self._event("error", {"code": code, "message": message, "param": err.get("param")})
                + self._event("response.failed", {"response": failed}))


__all__ = ["StreamEncoder"]

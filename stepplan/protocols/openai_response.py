"""OpenAI Chat Completions responses and streams: wire JSON ⇄ canonical.

Upstream side: :func:`decode_response` and :class:`StreamDecoder` (chunk dicts →
canonical events). Client side: :func:`encode_response` and :class:`StreamEncoder`
(canonical events → SSE bytes). Usage extraction is part of this contract:
OpenAI's ``prompt_tokens`` *includes* cached tokens, so the uncached count is
``prompt_tokens - cached``; it is never guessed the other way round.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ._usage import BadCount, count, defect
from .canonical import (
    Block,
    Event,
    Finish,
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

FINISH_IN: dict[str, StopReason] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "content_filter", "sensitive": "content_filter", "eos": "end_turn",
}
FINISH_OUT: dict[str, str] = {
    "end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "stop_sequence": "stop",
    "content_filter": "content_filter", "error": "stop",
}


def usage_from_openai(u: Any, final: bool = True) -> Usage | None:
    """Upstream usage → canonical; ``None`` when absent. Invalid counts (negative, fractional,
    absurd) make it unknown (``known=False``), so the call is counted locally instead."""
    if not isinstance(u, dict):
        return None
    try:
        prompt = count(u, "prompt_tokens")
        details = u.get("prompt_tokens_details") or {}
        cached = count(details, "cached_tokens") if isinstance(details, dict) else 0
        cached = cached or count(u, "cached_tokens") or count(u, "prompt_cache_hit_tokens")
        out = count(u, "completion_tokens")
        cdetails = u.get("completion_tokens_details") or {}
        reasoning = count(cdetails, "reasoning_tokens") if isinstance(cdetails, dict) else 0
    except BadCount as exc:
        defect("openai", exc, u)
        return Usage()
    cached = min(cached, prompt)
    return Usage(input=prompt - cached, cache_read=cached, output=out, reasoning=min(reasoning, out), known=True,
                 final=final)


def usage_to_openai(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read + u.cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output,
        "total_tokens": prompt + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    }


def _stop_reason(choice: dict[str, Any], stops: list[str]) -> tuple[StopReason, str | None]:
    fr = choice.get("finish_reason")
    reason = FINISH_IN.get(fr, "end_turn") if isinstance(fr, str) else "end_turn"
    matched = choice.get("stop_reason")  # vLLM / SGLang report the stop string that matched
    if reason == "end_turn" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return reason, None


# ============================================================================ upstream → canonical
def decode_response(body: Any, stops: list[str]) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ValueError("upstream response has no choices")
    choice = body["choices"][0]
    msg = choice.get("message") or {}
    blocks: list[Block] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append(Thinking(reasoning))
    content = msg.get("content")
    if isinstance(content, str) and content:
        blocks.append(Text(content))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        blocks.append(ToolCall(id=tc.get("id") or "", name=fn.get("name") or "",
                               arguments=args if isinstance(args, str) else orjson.dumps(args or {}).decode()))
    reason, seq = _stop_reason(choice, stops)
    if reason == "end_turn" and any(isinstance(b, ToolCall) for b in blocks):
        reason = "tool_use"
    usage = usage_from_openai(body.get("usage")) or Usage()
    return Response(id=str(body.get("id") or ""), model=str(body.get("model") or ""), content=blocks,
                    stop_reason=reason, stop_sequence=seq, usage=usage)


class StreamDecoder:
    """Upstream chunk dicts → canonical events. One per upstream call."""

    __slots__ = ("finish", "saw_tool", "stops", "tool_index", "usage")

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.finish: Finish | None = None
        self.saw_tool = False
        self.tool_index: dict[int, int] = {}
        self.usage: Usage | None = None

    def feed(self, chunk: Any) -> list[Event]:
        """One upstream frame. Raises ValueError for a frame that is not a chat completion chunk
        (a JSON value of another shape), which the engine reports as a protocol error."""
        if not isinstance(chunk, dict):
            raise ValueError(f"stream frame is a JSON {type(chunk).__name__}, not a chat.completion.chunk object")
        choices = chunk.get("choices")
        if not isinstance(choices, list) and not isinstance(chunk.get("usage"), dict):
            raise ValueError(f"stream frame has neither choices nor usage (keys: {', '.join(list(chunk)[:8])})")
        events: list[Event] = []
        if choices:
            choice = choices[0]
            if not isinstance(choice, dict):
                raise ValueError("stream frame's choices[0] is not an object")
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ValueError("stream frame's choices[0].delta is not an object")
            r = delta.get("reasoning_content")
            if r is None:
                r = delta.get("reasoning")
            if isinstance(r, str) and r:
                events.append(ThinkingDelta(r))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            for tc in delta.get("tool_calls") or ():
                self.saw_tool = True
                up_index = tc.get("index", 0)
                idx = self.tool_index.setdefault(up_index, len(self.tool_index))
                fn = tc.get("function") or {}
                args = fn.get("arguments")
                events.append(ToolCallDelta(idx, tc.get("id"), fn.get("name"),
                                            args if isinstance(args, str) else ""))
            if choice.get("finish_reason"):
                reason, seq = _stop_reason(choice, self.stops)
                if reason == "end_turn" and self.saw_tool:
                    reason = "tool_use"
                self.finish = Finish(reason, seq)  # emitted by close(), after any usage
        # Usage is the upstream's last word when it comes after (or with) the finish, or in the
        # usage-only chunk; some servers report a running count on every chunk before that.
        u = usage_from_openai(chunk.get("usage"), final=self.finish is not None or not choices)
        if u is not None:
            self.usage = u
            events.append(UsageUpdate(u))
        return events

    def close(self) -> list[Event]:
        """Events to emit when the upstream stream has ended."""
        return [self.finish or Finish("end_turn")]


# ============================================================================ canonical → client
def _reasoning_text(blocks: list[Block]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, Thinking) and not b.redacted)


def encode_response(resp: Response, model: str, created: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant"}
    texts = [b.text for b in resp.content if isinstance(b, Text)]
    calls = [b for b in resp.content if isinstance(b, ToolCall)]
    msg["content"] = "".join(texts) if texts or not calls else None
    reasoning = _reasoning_text(resp.content)
    if reasoning:
        msg["reasoning"] = reasoning
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = [{"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                             for tc in calls]
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": msg, "logprobs": None,
                     "finish_reason": FINISH_OUT[resp.stop_reason]}],
        "usage": usage_to_openai(resp.usage),
    }


DONE = b"data: [DONE]\n\n"


class StreamEncoder:
    """Canonical events → OpenAI ``chat.completion.chunk`` SSE frames, as they arrive."""

    __slots__ = ("finished", "include_usage", "prefix", "sent_role", "tool_ids", "usage")

    def __init__(self, id: str, model: str, include_usage: bool, created: int | None = None):
        # Every chunk shares this prefix; only the choices/usage tail differs.
        self.prefix = (b'data: {"id":' + orjson.dumps(id) + b',"object":"chat.completion.chunk","created":'
                       + str(created or int(time.time())).encode() + b',"model":' + orjson.dumps(model) + b',')
        self.include_usage = include_usage
        self.sent_role = False
        self.usage: Usage | None = None
        self.finished = False
        self.tool_ids: dict[int, str] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self.sent_role:
            delta = {"role": "assistant", **delta}
            if "content" not in delta:
                delta["content"] = ""
            self.sent_role = True
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.prefix + b'"choices":' + orjson.dumps([choice]) + b"}\n\n"

    def start(self, first: Event | None = None) -> bytes:
        """The opening chunk (role assistant)."""
        return self._chunk({})

    def feed(self, ev: Event) -> bytes:
        if isinstance(ev, TextDelta):
            return self._chunk({"content": ev.text})
        if isinstance(ev, ThinkingDelta):
            return self._chunk({"content": "", "reasoning": ev.text, "reasoning_content": ev.text}
                               if not self.sent_role else {"reasoning": ev.text, "reasoning_content": ev.text})
        if isinstance(ev, ToolCallDelta):
            tc: dict[str, Any] = {"index": ev.index}
            if ev.id is not None and ev.index not in self.tool_ids:
                self.tool_ids[ev.index] = ev.id
                tc["id"] = ev.id
                tc["type"] = "function"
            fn: dict[str, Any] = {"arguments": ev.arguments}
            if ev.name is not None:
                fn["name"] = ev.name
            tc["function"] = fn
            return self._chunk({"tool_calls": [tc]})
        if isinstance(ev, UsageUpdate):
            self.usage = ev.usage
            return b""
        if isinstance(ev, Finish):
            self.finished = True
            return self._chunk({}, FINISH_OUT[ev.reason])
        if isinstance(ev, ThinkingSignature):
            return b""
        return b""

    def end(self, billed: Usage | None = None) -> bytes:
        """The usage chunk (when asked for) and ``[DONE]``. ``billed`` is the usage the call was
        charged for: the upstream's, or a local count when the upstream reported none."""
        tail = b""
        if self.include_usage:
            usage = billed or self.usage or Usage()
            tail = self.prefix + b'"choices":[],"usage":' + orjson.dumps(usage_to_openai(usage)) + b"}\n\n"
        return tail + DONE

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n" + DONE

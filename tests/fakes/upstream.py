"""A scriptable fake model server: a real HTTP server on 127.0.0.1 for black-box tests.

It speaks both upstream protocols (``/v1/chat/completions`` and ``/v1/messages``) and
records every request it receives. By default it answers with a small, deterministic
completion built from the request; a test can queue exact replies instead:

    fake.queue_json(body, status=200)
    fake.queue_sse([chunk_dict_or_raw_bytes, ...], delay=0.0, cut=False)
    fake.responder = lambda path, body: Reply(...)   # answers whatever nothing is queued for

With ``fake.prompt_cache = PromptCache()`` (tests/fakes/prompt_cache.py) it also simulates
Anthropic prompt caching on ``/v1/messages``: the usage of every reply, queued or default,
gets the input, cache-read and cache-write tokens the request's breakpoints earn, and more
than 4 breakpoints is Anthropic's 400. ``reset()`` turns it off again.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.prompt_cache import PromptCache, TooManyBreakpoints

DEFAULT_TEXT = "Hello from the fake upstream!"
DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    sse: list[Any] | None = None  # dicts (sent as data:), raw bytes, or ("event", dict) pairs
    delay: float = 0.0  # seconds between SSE chunks
    first_delay: float = 0.0  # seconds before the response starts
    cut: bool = False  # drop the connection after the last chunk without finishing
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (timeout tests)
    gate: threading.Event | None = None  # answer only once the test sets this (at most 60 s later)
    reset: bool = False  # drop the connection (TCP reset) without answering
    raw: bytes | None = None  # the body as is, instead of ``json`` (truncated or malformed documents)


ReplyFn = Callable[[str, Any], Reply]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    time: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeUpstream:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context  # serve https with it (tests/fakes/tls.py makes one)
        self.port = free_port()
        self.requests: list[Recorded] = []
        self.replies: deque[Reply] = deque()
        # Answers a request nothing is queued for, built from that request (path, body); a test
        # sets it when which requests come, or in which protocol, is up to the client under test.
        self.responder: ReplyFn | None = None
        self.cancelled = 0  # streams whose client went away before the end
        self.prompt_cache: PromptCache | None = None  # set to simulate Anthropic prompt caching
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ---------------------------------------------------------------- control
    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/v1"

    def queue_json(self, body: Any, status: int = 200, **kw: Any) -> None:
        self.replies.append(Reply(status=status, json=body, **kw))

    def queue_sse(self, chunks: list[Any], **kw: Any) -> None:
        self.replies.append(Reply(sse=chunks, **kw))

    def queue(self, reply: Reply) -> None:
        self.replies.append(reply)

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()
        self.responder = None
        self.cancelled = 0
        self.prompt_cache = None

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # ---------------------------------------------------------------- server
    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-upstream")
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port,
                                                          ssl_context=self.ssl_context).start())
        self._ready.set()
        self._loop.run_forever()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        self.requests.append(Recorded(request.path, dict(request.headers), body, time.time()))
        answer = self.responder or self.default_reply
        reply = self.replies.popleft() if self.replies else answer(request.path, body)
        if self.prompt_cache is not None and request.path.endswith("/messages") and isinstance(body, dict):
            reply = self._cached(reply, body)
        try:
            if reply.hang:
                await asyncio.sleep(60)
            if reply.gate is not None:
                deadline = time.monotonic() + 60
                while not reply.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            if reply.first_delay:
                await asyncio.sleep(reply.first_delay)
        except asyncio.CancelledError:  # the gateway dropped the call before any answer
            self.cancelled += 1
            raise
        if reply.reset:
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:  # SO_LINGER 0: close() sends a RST, not a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            request.transport.abort()  # type: ignore[union-attr]
            raise asyncio.CancelledError
        if reply.sse is None:
            body = reply.raw if reply.raw is not None else orjson.dumps(reply.json)
            return web.Response(status=reply.status, body=body, content_type="application/json",
                                headers=reply.headers)
        resp = web.StreamResponse(status=reply.status, headers={"content-type": "text/event-stream", **reply.headers})
        await resp.prepare(request)
        try:
            for i, chunk in enumerate(reply.sse):
                if i and reply.delay:
                    await asyncio.sleep(reply.delay)
                await resp.write(_frame(chunk))
            if reply.cut:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        return resp

    def _cached(self, reply: Reply, body: dict[str, Any]) -> Reply:
        """The reply with the usage prompt caching gives this request (or Anthropic's 400)."""
        assert self.prompt_cache is not None
        try:
            usage = self.prompt_cache.observe(body)
        except TooManyBreakpoints as exc:
            return Reply(status=400, json={"type": "error", "error": {"type": "invalid_request_error",
                                                                      "message": str(exc)}})
        if isinstance(reply.json, dict) and isinstance(reply.json.get("usage"), dict):
            return replace(reply, json={**reply.json, "usage": {**reply.json["usage"], **usage}})
        if reply.sse is not None:
            chunks: list[Any] = []
            for chunk in reply.sse:
                if isinstance(chunk, tuple) and chunk[0] == "message_start":
                    msg = chunk[1]["message"]
                    chunk = (chunk[0], {**chunk[1], "message": {**msg, "usage": {**msg.get("usage", {}), **usage}}})
                chunks.append(chunk)
            return replace(reply, sse=chunks)
        return reply

    # ---------------------------------------------------------------- default replies
    def default_reply(self, path: str, body: Any) -> Reply:
        stream = isinstance(body, dict) and body.get("stream")
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        if path.endswith("/messages"):
            return Reply(sse=anthropic_text_stream(DEFAULT_TEXT, model)) if stream else Reply(
                json=anthropic_message(DEFAULT_TEXT, model))
        if stream:
            usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
            return Reply(sse=openai_text_stream(DEFAULT_TEXT, model, usage=DEFAULT_USAGE if usage else None))
        return Reply(json=openai_completion(DEFAULT_TEXT, model))


def _frame(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, tuple):
        event, data = chunk
        return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    if chunk == "[DONE]":
        return b"data: [DONE]\n\n"
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# ------------------------------------------------------------------ reply builders (OpenAI)
def openai_completion(text: str | None, model: str = "fake", *, reasoning: str | None = None,
                      tool_calls: list[dict[str, Any]] | None = None, finish: str = "stop",
                      usage: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if tool_calls:
        msg["tool_calls"] = tool_calls
        finish = "tool_calls" if finish == "stop" else finish
    return {"id": "up-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": usage if usage is not None else DEFAULT_USAGE}


def openai_chunk(delta: dict[str, Any], finish: str | None = None, model: str = "fake",
                 usage: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        c["usage"] = usage
    return c


def openai_text_stream(text: str, model: str = "fake", *, reasoning: str | None = None,
                       usage: dict[str, Any] | None = DEFAULT_USAGE, pieces: int = 4) -> list[Any]:
    chunks: list[Any] = [openai_chunk({"role": "assistant", "content": ""}, model=model)]
    if reasoning:
        chunks.append(openai_chunk({"reasoning_content": reasoning}, model=model))
    step = max(1, len(text) // pieces)
    for i in range(0, len(text), step):
        chunks.append(openai_chunk({"content": text[i:i + step]}, model=model))
    chunks.append(openai_chunk({}, "stop", model=model))
    if usage is not None:
        chunks.append({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [], "usage": usage})
    chunks.append("[DONE]")
    return chunks


# ------------------------------------------------------------------ reply builders (Anthropic)
def anthropic_message(text: str, model: str = "fake", *, thinking: str | None = None,
                      tool_uses: list[dict[str, Any]] | None = None, stop_reason: str = "end_turn",
                      usage: dict[str, Any] | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": "upstream-sig"})
    if text:
        content.append({"type": "text", "text": text})
    for tu in tool_uses or []:
        content.append({"type": "tool_use", **tu})
    if tool_uses and stop_reason == "end_turn":
        stop_reason = "tool_use"
    return {"id": "msg_up1", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": usage or {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 0,
                               "cache_creation_input_tokens": 0}}


def anthropic_text_stream(text: str, model: str = "fake", *, thinking: str | None = None,
                          usage_in: dict[str, Any] | None = None, output_tokens: int = 7) -> list[Any]:
    u = usage_in or {"input_tokens": 11, "output_tokens": 1, "cache_read_input_tokens": 0,
                     "cache_creation_input_tokens": 0}
    ev: list[Any] = [("message_start", {"type": "message_start", "message": {
        "id": "msg_up1", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": u}})]
    idx = 0
    if thinking:
        ev += [("content_block_start", {"type": "content_block_start", "index": idx,
                                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
               ("content_block_delta", {"type": "content_block_delta", "index": idx,
                                        "delta": {"type": "thinking_delta", "thinking": thinking}}),
               ("content_block_delta", {"type": "content_block_delta", "index": idx,
                                        "delta": {"type": "signature_delta", "signature": "upstream-sig"}}),
               ("content_block_stop", {"type": "content_block_stop", "index": idx})]
        idx += 1
    ev.append(("content_block_start", {"type": "content_block_start", "index": idx,
                                       "content_block": {"type": "text", "text": ""}}))
    half = len(text) // 2
    for piece in (text[:half], text[half:]):
        ev.append(("content_block_delta", {"type": "content_block_delta", "index": idx,
                                           "delta": {"type": "text_delta", "text": piece}}))
    ev.append(("content_block_stop", {"type": "content_block_stop", "index": idx}))
    ev.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": output_tokens}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    return ev

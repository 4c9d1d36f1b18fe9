"""A fast fake model server for benchmarks (OpenAI chat + Anthropic messages).

Run on its own::

    python bench/fake_upstream.py --port 18001 [--chunks 8] [--chunk-delay-ms 0] [--reasoning]

Endpoints (127.0.0.1 only):

* ``POST /v1/chat/completions`` -- OpenAI chat. JSON, or SSE when the body has
  ``"stream": true``. With ``stream_options.include_usage`` a final usage-only
  chunk (``"choices": []``) is sent before ``data: [DONE]``.
* ``POST /v1/messages`` -- Anthropic messages. JSON, or the canonical SSE event
  sequence (``message_start`` .. ``message_stop``) when ``"stream": true``.
* ``GET /v1/models`` -- a fixed model list.
* ``GET /healthz`` -- ``ok``.

Every body is precomputed once per (model name, shape) and cached, so a
request costs one JSON decode of the request (to read ``model``/``stream``)
and a few socket writes.

Fixed usage numbers (documented contract for tests):

* prompt / input tokens: ``PROMPT_TOKENS`` = 12
* completion / output tokens: one per content chunk (``--chunks``), plus one per
  reasoning chunk (``REASONING_CHUNKS`` = 4) when ``--reasoning`` is on; OpenAI
  reports those in ``completion_tokens_details.reasoning_tokens``.
* Anthropic ``message_start`` carries ``input_tokens`` = 12 and
  ``output_tokens`` = 1; ``message_delta`` carries the final ``output_tokens``.

The content is ``"tok0 tok1 ... tok{N-1} "`` (chunk i is ``"tok{i} "``);
reasoning chunk i is ``"think{i} "``. With ``--reasoning`` OpenAI streams send
``delta.reasoning_content`` before the content and Anthropic streams send a
``thinking`` block (with a ``signature_delta``) at index 0 before the text.

``--chunk-delay-ms D`` sleeps D ms before every content/reasoning chunk after
the first token (the first token is sent at once, so time-to-first-token stays
low while the stream is held open for ``(chunks - 1) * D`` ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

try:  # orjson is much faster, but the script must work without it
    import orjson

    _loads = orjson.loads

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - fallback
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


PROMPT_TOKENS = 12
REASONING_CHUNKS = 4
SIGNATURE = "ZmFrZS1zaWduYXR1cmU="  # base64("fake-signature")
DEFAULT_MODEL = "step-3.5-flash"
MODELS = ("step-3.5-flash", "step-3.7-flash", "mock-model")
_CACHE_LIMIT = 256

JSON_CT = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Options:
    chunks: int = 8
    chunk_delay_ms: float = 0.0
    reasoning: bool = False
    coalesce: bool = False


# A precomputed stream: list of (delay_before_seconds, bytes) segments.
Segments = list[tuple[float, bytes]]


def _openai_usage(opts: Options) -> dict[str, Any]:
    reasoning = REASONING_CHUNKS if opts.reasoning else 0
    completion = opts.chunks + reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    if opts.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _content_text(opts: Options) -> str:
    return "".join(f"tok{i} " for i in range(opts.chunks))


def _reasoning_text() -> str:
    return "".join(f"think{i} " for i in range(REASONING_CHUNKS))


class Bodies:
    """Builds and caches every response body, keyed by model name."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.created = int(time.time())
        self.delay = opts.chunk_delay_ms / 1000.0
        self._cache: dict[tuple[str, str], Any] = {}
        self.models_body = _dumps(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": self.created, "owned_by": "fake"} for m in MODELS],
            }
        )

    def get(self, kind: str, model: str) -> Any:
        key = (kind, model)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = getattr(self, "_build_" + kind)(model)
            self._cache[key] = hit
        return hit

    # --- OpenAI ---------------------------------------------------------
    def _build_openai_json(self, model: str) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": _content_text(self.opts)}
        if self.opts.reasoning:
            message["reasoning_content"] = _reasoning_text()
        return _dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": self.created,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": _openai_usage(self.opts),
            }
        )

    def _openai_chunk(self, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
        obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + _dumps(obj) + b"\n\n"

    def _openai_stream(self, model: str, usage: bool) -> Segments:
        segs: Segments = [(0.0, self._openai_chunk(model, {"role": "assistant", "content": ""}, None))]
        tokens = 0
        if self.opts.reasoning:
            for i in range(REASONING_CHUNKS):
                segs.append(
                    (
                        self.delay if tokens else 0.0,
                        self._openai_chunk(model, {"reasoning_content": f"think{i} "}, None),
                    )
                )
                tokens += 1
        for i in range(self.opts.chunks):
            segs.append((self.delay if tokens else 0.0, self._openai_chunk(model, {"content": f"tok{i} "}, None)))
            tokens += 1
        segs.append((0.0, self._openai_chunk(model, {}, "stop")))
        if usage:
            obj = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
                "choices": [],
                "usage": _openai_usage(self.opts),
            }
            segs.append((0.0, b"data: " + _dumps(obj) + b"\n\n"))
        segs.append((0.0, b"data: [DONE]\n\n"))
        return self._finish(segs)

    def _build_openai_sse(self, model: str) -> Segments:
        return self._openai_stream(model, usage=False)

    def _build_openai_sse_usage(self, model: str) -> Segments:
        return self._openai_stream(model, usage=True)

    # --- Anthropic ------------------------------------------------------
    def _output_tokens(self) -> int:
        return self.opts.chunks + (REASONING_CHUNKS if self.opts.reasoning else 0)

    def _build_anthropic_json(self, model: str) -> bytes:
        content: list[dict[str, Any]] = []
        if self.opts.reasoning:
            content.append({"type": "thinking", "thinking": _reasoning_text(), "signature": SIGNATURE})
        content.append({"type": "text", "text": _content_text(self.opts)})
        return _dumps(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": PROMPT_TOKENS,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": self._output_tokens(),
                },
            }
        )

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"

    def _build_anthropic_sse(self, model: str) -> Segments:
        ev = self._event
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": PROMPT_TOKENS,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        }
        segs: Segments = [(0.0, ev("message_start", start))]
        index = 0
        tokens = 0
        if self.opts.reasoning:
            segs.append(
                (
                    0.0,
                    ev(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                        },
                    ),
                )
            )
            for i in range(REASONING_CHUNKS):
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": f"think{i} "},
                }
                segs.append((self.delay if tokens else 0.0, ev("content_block_delta", delta)))
                tokens += 1
            sig = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": SIGNATURE},
            }
            segs.append((0.0, ev("content_block_delta", sig)))
            segs.append((0.0, ev("content_block_stop", {"type": "content_block_stop", "index": 0})))
            index = 1
        segs.append(
            (
                0.0,
                ev(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                ),
            )
        )
        segs.append((0.0, ev("ping", {"type": "ping"})))
        for i in range(self.opts.chunks):
            delta = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": f"tok{i} "}}
            segs.append((self.delay if tokens else 0.0, ev("content_block_delta", delta)))
            tokens += 1
        segs.append((0.0, ev("content_block_stop", {"type": "content_block_stop", "index": index})))
        msg_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": self._output_tokens()},
        }
        segs.append((0.0, ev("message_delta", msg_delta)))
        segs.append((0.0, ev("message_stop", {"type": "message_stop"})))
        return self._finish(segs)

    def _finish(self, segs: Segments) -> Segments:
        """Merge segments that are sent back to back when --coalesce is on."""
        if not self.opts.coalesce:
            return segs
        merged: Segments = []
        for delay, data in segs:
            if merged and delay == 0.0:
                merged[-1] = (merged[-1][0], merged[-1][1] + data)
            else:
                merged.append((delay, data))
        return merged


def _error(status: int, message: str) -> web.Response:
    body = _dumps({"error": {"message": message, "type": "invalid_request_error"}})
    return web.Response(status=status, body=body, content_type=JSON_CT)


async def _read_request(request: web.Request) -> dict[str, Any] | None:
    try:
        data = _loads(await request.read())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _stream(request: web.Request, segs: Segments) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    write = resp.write
    sleep = asyncio.sleep
    try:
        for delay, data in segs:
            if delay:
                await sleep(delay)
            await write(data)
        await resp.write_eof()
    except ConnectionResetError:  # the client went away mid-stream
        pass
    return resp


def make_app(opts: Options) -> web.Application:
    bodies = Bodies(opts)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        req = await _read_request(request)
        if req is None:
            return _error(400, "body must be a JSON object")
        model = req.get("model") or DEFAULT_MODEL
        if not isinstance(model, str):
            return _error(400, "model must be a string")
        if req.get("stream") is True:
            so = req.get("stream_options")
            kind = "openai_sse_usage" if isinstance(so, dict) and so.get("include_usage") else "openai_sse"
            return await _stream(request, bodies.get(kind, model))
        return web.Response(body=bodies.get("openai_json", model), content_type=JSON_CT)

    async def messages(request: web.Request) -> web.StreamResponse:
        req = await _read_request(request)
        if req is None:
            return _error(400, "body must be a JSON object")
        model = req.get("model") or DEFAULT_MODEL
        if not isinstance(model, str):
            return _error(400, "model must be a string")
        if req.get("stream") is True:
            return await _stream(request, bodies.get("anthropic_sse", model))
        return web.Response(body=bodies.get("anthropic_json", model), content_type=JSON_CT)

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=bodies.models_body, content_type=JSON_CT)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b"ok", content_type="text/plain")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18001)
    p.add_argument("--chunks", type=int, default=8, help="content chunks per stream (>= 1)")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay before each chunk after the first token")
    p.add_argument("--reasoning", action="store_true", help="add reasoning_content / thinking before the content")
    p.add_argument("--coalesce", action="store_true", help="send back-to-back SSE events in one write")
    p.add_argument("--backlog", type=int, default=4096)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.chunks < 1:
        sys.exit("--chunks must be >= 1")
    opts = Options(
        chunks=args.chunks, chunk_delay_ms=args.chunk_delay_ms, reasoning=args.reasoning, coalesce=args.coalesce
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional
        pass
    url = f"http://{args.host}:{args.port}"
    print(f"fake upstream on {url} chunks={opts.chunks} delay_ms={opts.chunk_delay_ms} reasoning={opts.reasoning}")
    sys.stdout.flush()
    web.run_app(
        make_app(opts),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=args.backlog,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()

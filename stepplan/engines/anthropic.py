"""Engine for Anthropic-Messages-compatible upstreams (DeepSeek's ``/anthropic`` endpoint,
Anthropic itself, any server speaking ``POST /v1/messages``).

``base_url`` must include the version segment, e.g. ``https://api.deepseek.com/anthropic/v1``:
the engine posts to ``{base_url}/messages``.

Upstream thinking signatures: Anthropic-protocol upstreams sign their thinking blocks
and want the same signature back on later turns (DeepSeek answers 400 otherwise).
Anthropic clients get it back inside the gateway's own signature; for clients that
echo only the text (OpenAI ``reasoning_content``, or reasoning restored by tool-call
id), the engine keeps a bounded map from thinking text to the upstream signature.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..catalog import ModelSpec
from ..errors import UpstreamError
from ..protocols.anthropic_request import encode_request
from ..protocols.anthropic_response import StreamDecoder, decode_response
from ..protocols.canonical import Event, Request, Response, Thinking, ThinkingDelta, ThinkingSignature
from ..settings import UpstreamConfig
from ..streaming.sse import SSEParser
from ._http import HTTPUpstream
from .base import CallContext

ANTHROPIC_VERSION = "2023-06-01"


class SignatureMemory:
    """Bounded, time-limited map: digest of a thinking text → the upstream's signature for it."""

    def __init__(self, max_entries: int = 20_000, ttl: float = 6 * 3600):
        self.max_entries = max_entries
        self.ttl = ttl
        self._items: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    @staticmethod
    def hasher() -> Any:
        return hashlib.blake2b(digest_size=16)

    def remember(self, text: str, signature: str) -> None:
        if text:
            h = self.hasher()
            h.update(text.encode())
            self.remember_digest(h.digest(), signature)

    def remember_digest(self, key: bytes, signature: str) -> None:
        if not signature:
            return
        self._items[key] = (time.monotonic() + self.ttl, signature)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, text: str) -> str | None:
        h = self.hasher()
        h.update(text.encode())
        hit = self._items.get(h.digest())
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def _error_text(data: dict[str, Any]) -> str:
    err = data.get("error")
    if isinstance(err, dict):
        return f"{err.get('type') or 'error'}: {err.get('message') or ''}".strip()
    return str(err)


class AnthropicEngine:
    protocol = "anthropic"

    def __init__(self, cfg: UpstreamConfig):
        self.name = cfg.name
        self.cfg = cfg
        auth = {"x-api-key": cfg.api_key} if cfg.api_key else {}
        self.http = HTTPUpstream(cfg, {**auth, "anthropic-version": ANTHROPIC_VERSION})
        self.signatures = SignatureMemory()

    def _body(self, req: Request, spec: ModelSpec, ctx: CallContext, stream: bool) -> dict[str, Any]:
        return encode_request(req, spec.sent_name(), stream=stream, default_max_tokens=spec.max_output,
                              replay_reasoning=self.cfg.replay_reasoning, restore=ctx.restore_reasoning,
                              signature_for=self.signatures.get)

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response:
        body = await self.http.post_json("/messages", self._body(req, spec, ctx, False), ctx.extra_headers)
        if isinstance(body, dict) and body.get("type") == "error":
            raise UpstreamError(f"upstream {self.name} failed: {_error_text(body)}")
        try:
            resp = decode_response(body)
        except (ValueError, AttributeError, TypeError) as exc:
            raise UpstreamError(f"upstream {self.name} sent an unusable response: {exc}") from exc
        for b in resp.content:
            if isinstance(b, Thinking) and b.signature:
                self.signatures.remember(b.text, b.signature)
        return resp

    async def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]:
        decoder = StreamDecoder()
        parser = SSEParser()
        thinking = SignatureMemory.hasher()  # digest of the current thinking block, to remember its signature
        thought = False
        source = self.http.stream("/messages", self._body(req, spec, ctx, True), ctx.extra_headers)
        try:
            async for raw in source:
                for _, data in parser.feed(raw):
                    for ev in self._decode(decoder, data):
                        if isinstance(ev, ThinkingDelta):
                            thinking.update(ev.text.encode())
                            thought = True
                        elif isinstance(ev, ThinkingSignature):
                            if thought:
                                self.signatures.remember_digest(thinking.digest(), ev.signature)
                            thinking, thought = SignatureMemory.hasher(), False
                        yield ev
                if decoder.done:
                    break
            if not decoder.done:
                for _, data in parser.flush():
                    for ev in self._decode(decoder, data):
                        yield ev
        finally:
            await source.aclose()
        if not decoder.done and decoder.finish is None:
            raise UpstreamError(f"upstream {self.name} closed the stream before it finished")
        for ev in decoder.close():
            yield ev

    def _decode(self, decoder: StreamDecoder, data: bytes) -> list[Event]:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {self.name} sent a malformed stream event") from exc
        if isinstance(payload, dict) and payload.get("type") == "error":
            raise UpstreamError(f"upstream {self.name} failed mid-stream: {_error_text(payload)}")
        try:
            return decoder.feed(payload)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"upstream {self.name} sent a stream event of the wrong shape: {exc}") from exc

    async def aclose(self) -> None:
        await self.http.aclose()

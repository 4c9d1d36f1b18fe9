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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from ..catalog import ModelSpec
from ..errors import UpstreamError
from ..protocols.anthropic_request import encode_request
from ..protocols.anthropic_response import StreamDecoder, decode_response
from ..protocols.canonical import Event, Request, Response, Thinking, ThinkingDelta, ThinkingSignature
from ..settings import UpstreamConfig
from ._http import HTTPUpstream
from ._sse import sse_events
from .base import CallContext
from .transport import Transport

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


def _stream_error(payload: Any) -> str | None:
    if isinstance(payload, dict) and payload.get("type") == "error":
        return _error_text(payload)
    return None


class _SigningDecoder(StreamDecoder):
    """The stream decoder, remembering the upstream's signature of each thinking block it sees
    (by a digest of the block's text) as the events go by."""

    __slots__ = ("_memory", "_thinking", "_thought")

    def __init__(self, memory: SignatureMemory):
        super().__init__()
        self._memory = memory
        self._thinking = SignatureMemory.hasher()  # digest of the current thinking block
        self._thought = False

    def feed(self, data: Any) -> list[Event]:
        events = StreamDecoder.feed(self, data)
        for ev in events:
            kind = type(ev)
            if kind is ThinkingDelta:
                self._thinking.update(ev.text.encode())  # type: ignore[union-attr]
                self._thought = True
            elif kind is ThinkingSignature:
                if self._thought:
                    self._memory.remember_digest(self._thinking.digest(), ev.signature)  # type: ignore[union-attr]
                self._thinking, self._thought = SignatureMemory.hasher(), False
        return events


class AnthropicEngine:
    protocol = "anthropic"

    def __init__(self, cfg: UpstreamConfig, transport: Transport | Mapping[str, Transport] | None = None):
        self.name = cfg.name
        self.cfg = cfg
        self.http = HTTPUpstream(
            cfg, lambda key: {**({"x-api-key": key} if key else {}), "anthropic-version": ANTHROPIC_VERSION},
            transport)
        self.signatures = SignatureMemory()

    def _body(self, req: Request, spec: ModelSpec, ctx: CallContext, stream: bool) -> dict[str, Any]:
        return encode_request(req, spec.sent_name(), stream=stream, default_max_tokens=spec.max_output,
                              replay_reasoning=self.cfg.replay_reasoning, restore=ctx.restore_reasoning,
                              signature_for=self.signatures.get)

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response:
        body = await self.http.post_json("/messages", self._body(req, spec, ctx, False), ctx.extra_headers, ctx,
                                         spec.id)
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

    def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]:
        def source() -> AsyncGenerator[bytes, None]:
            return self.http.stream("/messages", self._body(req, spec, ctx, True), ctx.extra_headers, ctx, spec.id)

        return sse_events(self.name, source, _SigningDecoder(self.signatures), _stream_error)

    async def aclose(self) -> None:
        await self.http.aclose()

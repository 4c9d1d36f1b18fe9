"""Engine for any OpenAI-compatible upstream: StepFun, DeepSeek, vLLM, SGLang, llama.cpp."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from ..catalog import ModelSpec
from ..errors import UpstreamError
from ..protocols.canonical import Event, Request, Response
from ..protocols.openai_request import encode_request
from ..protocols.openai_response import StreamDecoder, decode_response
from ..settings import UpstreamConfig
from ._http import HTTPUpstream
from ._sse import sse_events
from .base import CallContext
from .transport import Transport


def _stream_error(chunk: Any) -> str | None:
    """The message of an error document sent in place of a chunk (vLLM, SGLang, DeepSeek do)."""
    if isinstance(chunk, dict) and "error" in chunk and not chunk.get("choices"):
        err = chunk["error"]
        return str(err.get("message") if isinstance(err, dict) else err)
    return None


class OpenAIEngine:
    protocol = "openai"

    def __init__(self, cfg: UpstreamConfig, transport: Transport | Mapping[str, Transport] | None = None):
        self.name = cfg.name
        self.cfg = cfg
        self.http = HTTPUpstream(cfg, lambda key: {"authorization": f"Bearer {key}"} if key else {}, transport)

    def _body(self, req: Request, spec: ModelSpec, ctx: CallContext, stream: bool) -> dict[str, Any]:
        return encode_request(
            req, spec.sent_name(), stream=stream, replay_reasoning=self.cfg.replay_reasoning,
            restore=ctx.restore_reasoning, deepseek_thinking=spec.thinking_style == "deepseek",
        )

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response:
        body = await self.http.post_json("/chat/completions", self._body(req, spec, ctx, False), ctx.extra_headers,
                                         ctx, spec.id)
        try:
            return decode_response(body, req.stop)
        except (ValueError, AttributeError, TypeError) as exc:
            raise UpstreamError(f"upstream {self.name} sent an unusable response: {exc}") from exc

    def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]:
        def source() -> AsyncGenerator[bytes, None]:
            return self.http.stream("/chat/completions", self._body(req, spec, ctx, True), ctx.extra_headers,
                                    ctx, spec.id)

        return sse_events(self.name, source, StreamDecoder(req.stop), _stream_error, b"[DONE]")

    async def aclose(self) -> None:
        await self.http.aclose()

"""Engine for any OpenAI-compatible upstream: StepFun, DeepSeek, vLLM, SGLang, llama.cpp."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from ..catalog import ModelSpec
from ..errors import UpstreamError
from ..protocols.canonical import Event, Request, Response
from ..protocols.openai_request import encode_request
from ..protocols.openai_response import StreamDecoder, decode_response
from ..settings import UpstreamConfig
from ..streaming.sse import SSEParser
from ._http import HTTPUpstream
from .base import CallContext


class OpenAIEngine:
    protocol = "openai"

    def __init__(self, cfg: UpstreamConfig):
        self.name = cfg.name
        self.cfg = cfg
        auth = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = HTTPUpstream(cfg, auth)

    def _body(self, req: Request, spec: ModelSpec, ctx: CallContext, stream: bool) -> dict:
        return encode_request(
            req, spec.sent_name(), stream=stream, replay_reasoning=self.cfg.replay_reasoning,
            restore=ctx.restore_reasoning, deepseek_thinking=spec.thinking_switch,
        )

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response:
        body = await self.http.post_json("/chat/completions", self._body(req, spec, ctx, False), ctx.extra_headers)
        try:
            return decode_response(body, req.stop)
        except (ValueError, AttributeError, TypeError) as exc:
            raise UpstreamError(f"upstream {self.name} sent an unusable response: {exc}") from exc

    async def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]:
        decoder = StreamDecoder(req.stop)
        parser = SSEParser()
        done = False
        source = self.http.stream("/chat/completions", self._body(req, spec, ctx, True), ctx.extra_headers)
        try:
            async for raw in source:
                for _, data in parser.feed(raw):
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamError(f"upstream {self.name} sent a malformed stream event") from exc
                    if isinstance(chunk, dict) and "error" in chunk and not chunk.get("choices"):
                        err = chunk["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        raise UpstreamError(f"upstream {self.name} failed mid-stream: {msg}")
                    try:
                        events = decoder.feed(chunk)
                    except (ValueError, TypeError, AttributeError) as exc:
                        raise UpstreamError(f"upstream {self.name} sent a stream event of the wrong shape: "
                                            f"{exc}") from exc
                    for ev in events:
                        yield ev
                if done:
                    break
        finally:
            await source.aclose()
        if not done and decoder.finish is None:
            raise UpstreamError(f"upstream {self.name} closed the stream before it finished")
        for ev in decoder.close():
            yield ev

    async def aclose(self) -> None:
        await self.http.aclose()

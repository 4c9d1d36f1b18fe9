"""The engine contract and the registry that builds engines from settings.

An engine turns a canonical :class:`Request` into a canonical :class:`Response`
(``complete``) or a stream of canonical events (``stream``) by calling one upstream.
Contract:
- the request is never mutated (a fallback may hand it to another engine);
- every ``stream`` ends with a :class:`Finish` event, preceded by a final
  :class:`UsageUpdate` whenever the upstream reported usage;
- failures before the first event raise :class:`UpstreamError` (retryable by the
  caller on another engine); failures after it raise the same, and the caller turns
  them into a protocol error event.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..catalog import ModelSpec
from ..protocols.canonical import Event, Request, Response, ToolCall

if TYPE_CHECKING:
    from ..settings import Settings, UpstreamConfig


@dataclass(slots=True)
class CallContext:
    trace_id: str
    # Restores reasoning for assistant turns whose client dropped it (keyed by tool calls).
    restore_reasoning: Callable[[list[ToolCall]], str | None] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


class Engine(Protocol):
    name: str
    protocol: str

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response: ...

    def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


def backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; an upstream's Retry-After wins when it is sane."""
    if retry_after is not None and 0 <= retry_after <= 30:
        return retry_after
    return min(8.0, 0.25 * (2**attempt)) * (0.5 + random.random() / 2)


async def sleep_backoff(attempt: int, retry_after: float | None) -> None:
    await asyncio.sleep(backoff(attempt, retry_after))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


EngineFactory = Callable[["UpstreamConfig"], Engine]


class EngineRegistry:
    """One engine per configured upstream, built once at start-up."""

    def __init__(self, settings: Settings, factories: dict[str, EngineFactory] | None = None):
        self.settings = settings
        self.factories = factories or default_factories()
        self.engines: dict[str, Engine] = {}

    def for_model(self, model_id: str) -> Engine:
        up = self.settings.upstream_for(model_id)
        engine = self.engines.get(up.name)
        if engine is None:
            engine = self.engines[up.name] = self.factories[up.protocol](up)
        return engine

    def preload(self) -> None:
        """Let engines that run a model in process (``local``) start loading it in the
        background, for every upstream some model is served by. Never blocks or raises."""
        used = {self.settings.default_upstream}
        used |= {m.upstream for m in self.settings.catalog.models.values() if m.upstream}
        for name in sorted(used):
            up = self.settings.upstreams[name]
            if up.protocol != "local":
                continue
            engine = self.engines.get(name)
            if engine is None:
                engine = self.engines[name] = self.factories[up.protocol](up)
            start = getattr(engine, "preload", None)
            if start is not None:
                start()

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()
        self.engines.clear()


def default_factories() -> dict[str, EngineFactory]:
    def openai(up: UpstreamConfig) -> Engine:
        from .openai import OpenAIEngine

        return OpenAIEngine(up)

    def anthropic(up: UpstreamConfig) -> Engine:
        from .anthropic import AnthropicEngine

        return AnthropicEngine(up)

    def local(up: UpstreamConfig) -> Engine:
        from .local import LocalEngine

        return LocalEngine(up)

    return {"openai": openai, "anthropic": anthropic, "local": local}

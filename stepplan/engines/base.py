"""The engine contract.

An engine turns a canonical :class:`Request` into a canonical :class:`Response`
(``complete``) or a stream of canonical events (``stream``) by calling one upstream.
Contract:
- the request is never mutated (a fallback may hand it to another engine);
- every ``stream`` ends with a :class:`Finish` event, preceded by a final
  :class:`UsageUpdate` whenever the upstream reported usage;
- failures before the first event raise :class:`UpstreamError` (retryable by the
  caller on another engine); failures after it raise the same, and the caller turns
  them into a protocol error event.

Which engine serves which upstream is :mod:`stepplan.engines.registry`'s job; how bytes reach
an HTTP upstream is the transport's (:mod:`stepplan.engines.transport`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..catalog import ModelSpec
from ..protocols.canonical import Event, Request, Response, ToolCall


@dataclass(slots=True)
class CallContext:
    trace_id: str
    # Restores reasoning for assistant turns whose client dropped it (keyed by tool calls).
    restore_reasoning: Callable[[list[ToolCall]], str | None] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    session: str | None = None  # the conversation key: keeps a pool member while it is healthy
    served_by: str | None = None  # set by the engine: "upstream/member" that answered (or last tried)


class Engine(Protocol):
    name: str
    protocol: str

    async def complete(self, req: Request, spec: ModelSpec, ctx: CallContext) -> Response: ...

    def stream(self, req: Request, spec: ModelSpec, ctx: CallContext) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...

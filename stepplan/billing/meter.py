"""The metering contract the request pipeline relies on.

``reserve`` runs before a call is forwarded and either returns a :class:`Reservation`
or raises (``NoSubscription``, ``QuotaExceeded``). ``settle`` runs exactly once per
reservation after the call, whatever happened to it; it must not be cancellable by a
client disconnect, so it only enqueues the settlement and returns an awaitable that
completes when the ledger entry is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from ..catalog import ModelSpec
from ..protocols.canonical import Request, Usage
from ..store.accounts import KeyInfo


@dataclass(slots=True)
class Reservation:
    request_id: str
    key: KeyInfo
    requested_model: str
    amount: int = 0  # micro-credits held
    started: float = 0.0
    data: dict[str, object] = field(default_factory=dict)  # meter-specific state
    settled: bool = False


@dataclass(slots=True)
class Outcome:
    served: ModelSpec
    usage: Usage
    status: str  # "ok" | "upstream_error" | "client_disconnect" | "error"
    route_score: float | None = None
    first_byte_ms: float | None = None
    total_ms: float | None = None
    protocol: str = "openai"  # the client protocol: openai | anthropic | responses


class Meter(Protocol):
    async def reserve(self, key: KeyInfo, spec: ModelSpec, req: Request, request_id: str,
                      input_tokens: int) -> Reservation: ...

    def settle(self, res: Reservation, outcome: Outcome) -> Awaitable[None]: ...

    def headers(self, res: Reservation) -> dict[str, str]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class NullMeter:
    """Metering off: every call is allowed and nothing is recorded."""

    async def reserve(self, key: KeyInfo, spec: ModelSpec, req: Request, request_id: str,
                      input_tokens: int) -> Reservation:
        return Reservation(request_id, key, req.model)

    def settle(self, res: Reservation, outcome: Outcome) -> Awaitable[None]:
        res.settled = True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def headers(self, res: Reservation) -> dict[str, str]:
        return {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

"""A scripted transport (like httpx's ``MockTransport``): engines and the retry logic in-process.

Each request sent pops the next step of the script: an exception (raised as the transport's
failure), or a :class:`Scripted` answer (status, headers, body chunks, optionally an error
raised after the chunks). Every request is recorded, so a test can count what reached the
"upstream" and read what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field

import orjson

from stepplan.engines.transport import UpstreamRequest


@dataclass
class Scripted:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    body: list[bytes] = field(default_factory=list)
    error_after: BaseException | None = None  # raised once the chunks are delivered (a broken body)
    closed: bool = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        for chunk in self.body:
            await asyncio.sleep(0)
            yield chunk
        if self.error_after is not None:
            raise self.error_after

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def read_now(self) -> bytes | None:
        return None  # a scripted body always arrives chunk by chunk

    def close(self) -> None:
        self.closed = True


def json_answer(doc: object, status: int = 200, **headers: str) -> Scripted:
    return Scripted(status, {"content-type": "application/json", **headers}, [orjson.dumps(doc)])


def sse_answer(events: Iterable[bytes | object], status: int = 200) -> Scripted:
    """One network chunk per item: bytes as they are, anything else as a ``data:`` event."""
    body = [e if isinstance(e, bytes) else b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    return Scripted(status, {"content-type": "text/event-stream"}, body)


class ScriptedTransport:
    def __init__(self, *steps: Scripted | BaseException) -> None:
        self.steps = list(steps)
        self.requests: list[UpstreamRequest] = []
        self.closed = False

    async def handle_request(self, request: UpstreamRequest) -> Scripted:
        self.requests.append(request)
        if not self.steps:
            raise AssertionError(f"unexpected request #{len(self.requests)} to {request.path}")
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def sent(self, i: int = -1) -> dict:
        return orjson.loads(self.requests[i].body)

    async def aclose(self) -> None:
        self.closed = True

"""A pinged stream (headers sent, pings going out) whose call fails with a gateway bug before its
first event still ends with the protocol's error event, never a cut connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from stepplan.api.common import pinged_body
from stepplan.errors import GatewayError


class Encoder:
    def error(self, body: dict[str, Any]) -> bytes:
        return b"error:" + body["error"]["code"].encode()


async def test_a_bug_before_the_first_event_ends_a_pinged_stream_with_an_error_event() -> None:
    async def opening_fails() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("a bug")

    async def no_frames() -> Any:
        if False:
            yield b""

    call = SimpleNamespace(trace_id="t1")
    out = [chunk async for chunk in pinged_body(asyncio.ensure_future(opening_fails()), b"ping", 0.01, no_frames(),
                                                Encoder(), lambda e: e.openai_body("t1"), call)]  # type: ignore[arg-type]
    assert out[0] == b"ping" and out[-1] == b"error:" + GatewayError.code.encode()

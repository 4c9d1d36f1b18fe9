"""Anthropic-protocol routes: ``POST /step_plan/v1/messages`` and ``…/messages/count_tokens``.

Both accept ``?beta=true`` (Claude Code always sends it) and keys by ``x-api-key`` or
``Authorization: Bearer``. Errors leave in Anthropic's shape (the error boundary picks
it by path).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..protocols.anthropic_request import decode_request
from ..protocols.anthropic_response import StreamEncoder, encode_response
from ..tokens import count_request
from .common import (
    PING_ANTHROPIC,
    authenticate,
    read_json,
    session_id,
    stream_frames,
    trace_id,
    until_disconnect,
)
from .responses import JSONResponse, SSEResponse

log = logging.getLogger("stepplan.api")


async def messages(request: HTTPRequest) -> Response:
    gw = request.app.state.gateway
    trace = trace_id(request)
    key = await authenticate(request)
    body, size = await read_json(request, gw.settings.max_body_bytes)
    req = decode_request(body, gw.signer)
    req.session_id = session_id(request, body.get("metadata"))
    call = await gw.start_call(req, key, trace, size, protocol="anthropic")
    arrived = request.scope["stepplan.t0"]
    msg_id = f"msg_{trace}"
    if not req.stream:
        resp = await until_disconnect(request, call.complete())
        headers = {**call.headers(arrived), "request-id": trace}
        return JSONResponse(encode_response(resp, req.model, msg_id, gw.signer), headers=headers)
    enc = StreamEncoder(msg_id, req.model, gw.signer)
    frames = await stream_frames(request, call, enc, lambda e: e.anthropic_body(trace), PING_ANTHROPIC, trace)
    return SSEResponse(frames, headers={**call.headers(arrived), "request-id": trace})


async def count_tokens(request: HTTPRequest) -> Response:
    gw = request.app.state.gateway
    await authenticate(request)
    body, _ = await read_json(request, gw.settings.max_body_bytes)
    req = decode_request(body, gw.signer, count_only=True)
    gw.catalog.resolve(req.model)
    n = await asyncio.to_thread(count_request, req)  # a big request tokenizes in tens of ms: off the loop
    return JSONResponse({"input_tokens": n})


ROUTES: list = [
    ("/step_plan/v1/messages", messages, ["POST"]),
    ("/step_plan/v1/messages/count_tokens", count_tokens, ["POST"]),
]

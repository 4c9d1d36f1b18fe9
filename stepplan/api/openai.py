"""OpenAI-protocol routes: chat completions and the model catalog."""

from __future__ import annotations

import time

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..catalog import model_card
from ..errors import ModelNotFound
from ..protocols.openai_request import decode_request
from ..protocols.openai_response import StreamEncoder, encode_response
from .common import (
    PING_SSE,
    authenticate,
    read_json,
    session_id,
    stream_frames,
    trace_id,
    until_disconnect,
)
from .responses import JSONResponse, SSEResponse


async def chat_completions(request: HTTPRequest) -> Response:
    gw = request.app.state.gateway
    trace = trace_id(request)
    key = await authenticate(request)
    body, size = await read_json(request, gw.settings.max_body_bytes)
    req = decode_request(body)
    req.session_id = session_id(request)
    call = await gw.start_call(req, key, trace, size)
    arrived = request.scope["stepplan.t0"]
    if not req.stream:
        resp = await until_disconnect(request, call.complete())
        resp.id = f"chatcmpl-{trace}"
        return JSONResponse(encode_response(resp, req.model), headers=call.headers(arrived))
    enc = StreamEncoder(f"chatcmpl-{trace}", req.model, req.include_usage, int(time.time()))
    frames = await stream_frames(request, call, enc, lambda e: e.openai_body(trace), PING_SSE, trace)
    return SSEResponse(frames, headers=call.headers(arrived))


async def list_models(request: HTTPRequest) -> Response:
    await authenticate(request)
    cards = [model_card(m) for m in request.app.state.gateway.catalog.public()]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: HTTPRequest) -> Response:
    await authenticate(request)
    name = request.path_params["model"]
    spec = request.app.state.gateway.catalog.models.get(name)
    if spec is None or not spec.public:
        raise ModelNotFound(f"model does not exist: '{name}'", param="model")
    return JSONResponse(model_card(spec))

"""OpenAI Responses API routes: ``POST /step_plan/v1/responses`` and the stored-response endpoints.

    POST   /step_plan/v1/responses                       create (streamed or not)
    GET    /step_plan/v1/responses/{id}                  a stored response (``include`` honoured)
    GET    /step_plan/v1/responses/{id}/input_items      its input items (``limit``, ``order``, ``after``)
    DELETE /step_plan/v1/responses/{id}
    POST   /step_plan/v1/responses/{id}/cancel           400: only background responses can be cancelled

The same key, plan, Credit metering, catalog rules and router as chat completions; the ledger
entry records ``protocol = responses``. Errors use the OpenAI ``{"error": {...}}`` envelope.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..errors import InvalidRequest, NotFound
from ..pipeline import Call, Gateway
from ..protocols.canonical import Request, Tool
from ..protocols.responses_request import ENCRYPTED_REASONING, Shape, decode_request
from ..protocols.responses_response import Answer, encode_response, new_response_id
from ..protocols.responses_stream import StreamEncoder
from ..reasoning_seal import Sealer
from ..settings import Settings
from ..store import stored_responses
from ..store.accounts import KeyInfo
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

log = logging.getLogger("stepplan.api")

DAY = 86_400
PURGE_EVERY = 600.0
DROPPED_TOOLS_HEADER = "x-stepplan-dropped-tools"


class ResponsesState:
    """What the Responses routes share: the reasoning sealer and the response store."""

    def __init__(self, settings: Settings, sessions: Any, secret: bytes):
        cfg = settings.responses  # checked when the config loads (settings.ResponsesConfig)
        self.retention = int(cfg.retention_days * DAY)
        self.sealer = Sealer(secret, [s.encode() for s in cfg.previous_secrets])
        self.sessions = sessions
        self._purged = time.monotonic()

    async def history(self, key: KeyInfo, body: Any) -> list[dict[str, Any]]:
        prev = body.get("previous_response_id") if isinstance(body, dict) else None
        if prev is None:
            return []
        if not isinstance(prev, str):
            raise InvalidRequest("'previous_response_id' must be a string", param="previous_response_id")
        async with self.sessions() as s:
            items = await stored_responses.chain(s, key.account_id, prev, int(time.time()))
        if items is None:
            raise InvalidRequest(f"previous response '{prev}' was not found: it was not stored, was deleted, "
                                 "expired, or belongs to another account", param="previous_response_id")
        return items

    async def save(self, key: KeyInfo, shape: Shape, stored: dict[str, Any]) -> None:
        """Keep a finished response; a failure is logged, never turned into an error for a call already made."""
        now = int(time.time())
        try:
            async with self.sessions() as s:
                await stored_responses.save(
                    s, id=stored["id"], account_id=key.account_id, previous_response_id=shape.previous_response_id,
                    model=stored["model"], status=stored["status"], input_items=shape.input_items, response=stored,
                    created_at=now, expires_at=now + self.retention)
                if time.monotonic() - self._purged > PURGE_EVERY:
                    self._purged = time.monotonic()
                    await stored_responses.purge(s, now)
                await s.commit()
        except Exception:
            log.warning("could not store response %s; previous_response_id will not find it", stored["id"],
                        exc_info=True)


def _state(request: HTTPRequest) -> ResponsesState:
    return request.app.state.responses


# ============================================================================ Step Plan rules
def web_search_runnable(gw: Gateway, model: str) -> bool:
    """Whether a ``web_search`` tool can run for this model: StepFun's built-in web search, which only an
    OpenAI-protocol upstream serving the model directly has (the router refuses it)."""
    spec = gw.catalog.resolve(model)
    return spec.kind != "router" and gw.settings.upstream_for(spec.id).protocol == "openai"


def apply_web_search(gw: Gateway, req: Request, shape: Shape) -> list[str]:
    """Forward the client's ``web_search`` tools the model can run; drop the others and say which.

    Dropped: every one with ``external_web_access: false`` (the client forbids live access, and
    no Step Plan search is offline: Codex always sends this one), and every one for a model that
    cannot run web search. The names of dropped tools go back in ``x-stepplan-dropped-tools``."""
    if not shape.web_search:
        return []
    runnable = web_search_runnable(gw, req.model)
    dropped: list[str] = []
    for t in shape.web_search:
        if runnable and t.get("external_web_access") is not False:
            req.tools.append(Tool(name="web_search", description=None, parameters={}, kind="web_search"))
        else:
            dropped.append(str(t.get("type")))
    return dropped


_PARAMS = {"reasoning_effort": "reasoning.effort", "max_tokens": "max_output_tokens"}


async def _start(gw: Gateway, req: Request, key: KeyInfo, trace: str, size: int) -> Call:
    try:
        return await gw.start_call(req, key, trace, size, protocol="responses")
    except InvalidRequest as exc:  # name the field as this protocol spells it
        exc.param = _PARAMS.get(exc.param or "", exc.param)
        raise


# ============================================================================ create
async def create(request: HTTPRequest) -> Response:
    gw: Gateway = request.app.state.gateway
    state = _state(request)
    trace = trace_id(request)
    key = await authenticate(request)
    body, size = await read_json(request, gw.settings.max_body_bytes)
    history = await state.history(key, body)
    req, shape = decode_request(body, state.sealer.open, history)
    if req.session_id is None:
        req.session_id = session_id(request)
    dropped = apply_web_search(gw, req, shape)
    call = await _start(gw, req, key, trace, size)
    arrived = request.scope["stepplan.t0"]
    answer = Answer(new_response_id(trace), req.model, shape, state.sealer)
    if not req.stream:
        resp = await until_disconnect(request, call.complete())
        client, stored = encode_response(resp, answer)
        if stored is not None:
            await state.save(key, shape, stored)
        return JSONResponse(client, headers=_headers(call, arrived, dropped))
    enc = StreamEncoder(answer)
    frames = await stream_frames(request, call, enc, lambda e: e.openai_body(trace), PING_SSE, trace)
    return SSEResponse(_storing(frames, enc, state, key, shape), headers=_headers(call, arrived, dropped))


def _headers(call: Call, arrived: float, dropped: list[str]) -> dict[str, str]:
    headers = call.headers(arrived)
    if dropped:
        headers[DROPPED_TOOLS_HEADER] = ",".join(dropped)
    return headers


async def _storing(frames: AsyncIterator[bytes], enc: StreamEncoder, state: ResponsesState, key: KeyInfo,
                   shape: Shape) -> AsyncIterator[bytes]:
    """The stream, with the finished response stored before its terminal event leaves (so a client
    that retrieves it right after the stream ends finds it)."""
    try:
        async for chunk in frames:
            if shape.store and enc.final is not None:
                final, enc.final = enc.final, None
                await state.save(key, shape, final)
            yield chunk
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


# ============================================================================ stored responses
async def _stored(request: HTTPRequest) -> tuple[KeyInfo, str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    key = await authenticate(request)
    rid = request.path_params["id"]
    async with _state(request).sessions() as s:
        found = await stored_responses.get(s, key.account_id, rid, int(time.time()))
    if found is None:
        raise NotFound(f"response '{rid}' was not found", param="id")
    return key, rid, found


def _include(request: HTTPRequest) -> bool:
    values = request.query_params.getlist("include") + request.query_params.getlist("include[]")
    return ENCRYPTED_REASONING in values


def _client_items(items: list[dict[str, Any]], include: bool) -> list[dict[str, Any]]:
    if include:
        return items
    return [{k: v for k, v in i.items() if k != "encrypted_content"} if i.get("type") == "reasoning" else i
            for i in items]


async def retrieve(request: HTTPRequest) -> Response:
    if request.query_params.get("stream") in ("true", "1"):
        raise InvalidRequest("streaming a stored response again is not supported; retrieve it without 'stream'",
                             param="stream")
    _, _, (response, _) = await _stored(request)
    response["output"] = _client_items(response.get("output") or [], _include(request))
    return JSONResponse(response)


async def input_items(request: HTTPRequest) -> Response:
    _, _, (_, items) = await _stored(request)
    qp = request.query_params
    raw_limit = qp.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise InvalidRequest("'limit' must be a number from 1 to 100", param="limit")
    order = qp.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    ordered = _client_items(items if order == "asc" else items[::-1], _include(request))
    after = qp.get("after")
    if after:
        ids = [i.get("id") for i in ordered]
        if after not in ids:
            raise InvalidRequest(f"'after' names item '{after}', which is not an input item of this response",
                                 param="after")
        ordered = ordered[ids.index(after) + 1:]
    page = ordered[:int(raw_limit)]
    return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > len(page)})


async def delete(request: HTTPRequest) -> Response:
    key = await authenticate(request)
    rid = request.path_params["id"]
    async with _state(request).sessions() as s:
        gone = await stored_responses.remove(s, key.account_id, rid, int(time.time()))
        await s.commit()
    if not gone:
        raise NotFound(f"response '{rid}' was not found", param="id")
    return JSONResponse({"id": rid, "object": "response", "deleted": True})


async def cancel(request: HTTPRequest) -> Response:
    await _stored(request)
    raise InvalidRequest("only background responses can be cancelled, and this gateway runs none: the response "
                         "has already finished", param="id")


ROUTES: list = [
    ("/step_plan/v1/responses", create, ["POST"]),
    ("/step_plan/v1/responses/{id}", retrieve, ["GET"]),
    ("/step_plan/v1/responses/{id}", delete, ["DELETE"]),
    ("/step_plan/v1/responses/{id}/input_items", input_items, ["GET"]),
    ("/step_plan/v1/responses/{id}/cancel", cancel, ["POST"]),
]

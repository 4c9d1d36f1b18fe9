"""The minimal Python pass-through proxy: the "Python limit" reference.

Starlette + one shared ``aiohttp.ClientSession``. Every request is forwarded to
``UPSTREAM + path`` with the body bytes and a few headers; the response bytes
are returned as they come (streamed when the upstream answers
``text/event-stream``). No parsing, no auth, no accounting: whatever a real
gateway does on top of this costs time that shows up as the difference.

Run (uvicorn, uvloop + httptools, 1 worker)::

    python bench/passthrough.py --upstream http://127.0.0.1:18001 --port 18002

or ``PASSTHROUGH_UPSTREAM=http://127.0.0.1:18001 uvicorn --factory bench.passthrough:app_from_env``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARD_HEADERS = (
    "content-type",
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "accept",
)


def create_app(upstream: str) -> Starlette:
    upstream = upstream.rstrip("/")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            app.state.session = session
            yield

    async def proxy(request: Request) -> Response:
        session: aiohttp.ClientSession = request.app.state.session
        body = await request.body()
        src = request.headers
        headers = {k: v for k in FORWARD_HEADERS if (v := src.get(k)) is not None}
        url = upstream + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            resp = await session.request(request.method, url, data=body, headers=headers)
        except (aiohttp.ClientError, OSError) as exc:
            return Response(
                f'{{"error":{{"message":"upstream: {type(exc).__name__}"}}}}', 502, media_type="application/json"
            )
        ctype = resp.headers.get("Content-Type", "application/octet-stream")
        if ctype.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return StreamingResponse(
                relay(), status_code=resp.status, headers={"content-type": ctype, "cache-control": "no-cache"}
            )
        try:
            data = await resp.read()
        finally:
            resp.release()
        return Response(data, status_code=resp.status, headers={"content-type": ctype})

    routes = [Route("/{path:path}", proxy, methods=["GET", "POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def app_from_env() -> Starlette:
    """App factory for ``uvicorn --factory bench.passthrough:app_from_env``."""
    return create_app(os.environ.get("PASSTHROUGH_UPSTREAM", "http://127.0.0.1:18001"))


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="minimal Starlette + aiohttp pass-through proxy")
    p.add_argument("--upstream", default=os.environ.get("PASSTHROUGH_UPSTREAM", "http://127.0.0.1:18001"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18002)
    p.add_argument("--backlog", type=int, default=4096)
    args = p.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
        backlog=args.backlog,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()

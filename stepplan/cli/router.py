"""``stepplan router score``: the server's routing code path, offline."""

from __future__ import annotations

import sys
from dataclasses import replace

import click
import orjson


@click.group()
def router() -> None:
    """step-router-v1 tools."""


@router.command("score")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.pass_context
def score(ctx: click.Context, path: str) -> None:
    """Score each JSONL line's `messages`; print {"score", "engine"} per line, in order."""
    from ..errors import GatewayError
    from ..protocols.openai_request import decode_request
    from ..routing.route import Router

    settings = ctx.obj["settings"]
    # Lines are independent conversations: no stickiness between them.
    r = Router(settings.catalog, replace(settings.router, sticky_seconds=0))
    spec = settings.catalog.get("step-router-v1")
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    out = sys.stdout
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                req = decode_request({"model": spec.id, "messages": item["messages"]})
                choice = r.choose(req, spec)
            except (orjson.JSONDecodeError, KeyError, TypeError, GatewayError) as exc:
                click.echo(f"error: line {n}: {exc}", err=True)
                sys.exit(2)
            out.write(orjson.dumps({"score": choice.score, "engine": choice.engines[0].id}).decode() + "\n")

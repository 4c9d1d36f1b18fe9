"""``stepplan admin-token`` (create, list, revoke admin API tokens) and ``stepplan audit`` (the
audit log of administrative changes). docs/security.md."""

from __future__ import annotations

import json
from typing import Any

import click

from .actor import cli_actor
from .main import fail, run_db, settings_from


def _now(ctx: click.Context) -> int:
    from ..billing.clock import Clock

    return Clock(settings_from(ctx).clock_offset).now()


@click.group("admin-token")
def admin_token() -> None:
    """Admin API tokens (scopes: read = GET endpoints, write = everything)."""


@admin_token.command("create")
@click.option("--name", required=True)
@click.option("--scope", type=click.Choice(["read", "write"]), required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str, as_json: bool) -> None:
    """Create a token (printed once: only its hash is stored)."""
    from ..store.admin_tokens import create_token, token_view
    from ..store.audit_log import record

    now = _now(ctx)

    async def go(s: Any) -> tuple[dict[str, Any], str]:
        row, token = await create_token(s, name, scope)
        view = token_view(row)
        await record(s, cli_actor(), "admin_token.create", f"admin_token:{row.id}", None, view, now)
        return view, token

    try:
        view, token = run_db(ctx, go)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({**view, "token": token}))
    else:
        click.echo(f"admin token id {view['id']} ({scope}) named {name} (shown once, store it now):\n{token}")


@admin_token.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    from ..store.admin_tokens import list_tokens, token_view

    async def go(s: Any) -> list[dict[str, Any]]:
        return [token_view(t) for t in await list_tokens(s)]

    rows = run_db(ctx, go)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        click.echo(f"{r['id']}\t{r['name']}\t{r['scope']}\t{r['prefix']}…\t{state}")


@admin_token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int) -> None:
    from ..store.admin_tokens import revoke_token, token_view
    from ..store.audit_log import record

    now = _now(ctx)

    async def go(s: Any) -> bool:
        row = await revoke_token(s, token_id)
        if row is None:
            return False
        await record(s, cli_actor(), "admin_token.revoke", f"admin_token:{token_id}", None, token_view(row), now)
        return True

    if not run_db(ctx, go):
        fail(f"no active admin token with id {token_id}")
    click.echo(f"revoked admin token {token_id}")


@click.command()
@click.option("--since", default=None, help="An ISO date or date-time, or a duration back from now (24h, 7d).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit(ctx: click.Context, since: str | None, limit: int, as_json: bool) -> None:
    """The audit log of administrative changes, oldest first."""
    from ..billing.clock import iso
    from ..key_settings import parse_since
    from ..store.audit_log import list_audit

    try:
        start = parse_since(since, _now(ctx))
    except ValueError as exc:
        fail(str(exc))

    async def go(s: Any) -> list[dict[str, Any]]:
        return await list_audit(s, start, limit)

    rows = run_db(ctx, go)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{iso(r['at'])}\t{r['actor']}\t{r['action']}\t{r['target']}\t"
                   f"{json.dumps(r['before'], sort_keys=True)} -> {json.dumps(r['after'], sort_keys=True)}")


def register(group: click.Group) -> None:
    group.add_command(admin_token)
    group.add_command(audit)

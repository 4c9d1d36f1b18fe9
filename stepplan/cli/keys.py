"""``stepplan keys``: create, update, rotate, list and revoke API keys, with per-key settings
(docs/security.md). Output shapes are stable: scripts rely on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..revocation import announce_now
from .actor import cli_actor
from .main import fail, run_db, settings_from

# (option, setting name in stepplan.key_settings, help)
_OPTIONS = (
    ("--expires", "expires", "Expiry: an ISO date (2027-01-01), a date-time, or a duration such as 30d."),
    ("--models", "models", "Comma-separated model allowlist, e.g. step-3.5-flash,step-router-v1."),
    ("--rpm", "rpm", "The key's own calls-per-minute limit."),
    ("--concurrency", "concurrency", "The key's own calls-in-flight limit."),
    ("--credit-limit-daily", "credit_limit_daily", "Credit the key may spend per calendar day (UTC)."),
    ("--credit-limit-monthly", "credit_limit_monthly", "Credit the key may spend per calendar month (UTC)."),
)


def _now(ctx: click.Context) -> int:
    from ..billing.clock import Clock

    return Clock(settings_from(ctx).clock_offset).now()


def setting_options(clear: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The per-key setting options (and their ``--clear-…`` twins for ``update``)."""
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        opts: list[Callable[..., Any]] = []
        for flag, name, help_ in _OPTIONS:
            opts.append(click.option(flag, name, default=None, help=help_))
        opts.append(click.option("--ip", "ip", multiple=True, help="Client network allowed (CIDR); repeatable or "
                                 "comma-separated. Uses [server] trusted_proxies for X-Forwarded-For."))
        opts.append(click.option("--label", "labels", multiple=True, help="A label k=v; repeatable."))
        if clear:
            for flag, name, _ in (*_OPTIONS, ("--ip", "ip", ""), ("--labels", "labels", "")):
                opts.append(click.option(f"--clear-{flag[2:]}", f"clear_{name}", is_flag=True,
                                         help=f"Remove the key's {flag[2:]} setting."))
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def _changes(ctx: click.Context, kw: dict[str, Any], clear: bool) -> dict[str, Any]:
    """The options given → api_keys columns and values (a cleared setting: its no-limit value)."""
    from ..key_settings import CLEARED, COLUMNS, SETTINGS, parse_setting

    settings = settings_from(ctx)
    models = [m.id for m in settings.catalog.public()]
    now = _now(ctx)
    out: dict[str, Any] = {}
    for name in SETTINGS:
        if clear and kw.get(f"clear_{name}"):
            out[COLUMNS[name]] = CLEARED[COLUMNS[name]]
        raw = kw.get(name)
        if raw is None or raw == ():
            continue
        if name == "ip":
            raw = ",".join(raw)
        if clear and kw.get(f"clear_{name}") and name != "labels":
            fail(f"--{name.replace('_', '-')} and --clear-{name.replace('_', '-')} contradict each other")
        try:
            column, value = parse_setting(name, list(raw) if name == "labels" else raw, now, models)
        except ValueError as exc:
            fail(str(exc))
        out[column] = value
    return out


def _show(view: dict[str, Any]) -> str:
    """One key as a line: id, account, prefix…, name, status, then its limits and last use."""
    from ..billing.clock import iso

    parts = [str(view["id"]), view["account"], f"{view['prefix']}…", view["name"] or "", view["status"]]
    extra = []
    if view["expires_at"] is not None:
        extra.append(f"expires={iso(view['expires_at'])}")
    for k in ("rpm", "concurrency", "credit_limit_daily", "credit_limit_monthly"):
        if view[k] is not None:
            extra.append(f"{k.replace('_', '-')}={view[k]}")
    if view["models"]:
        extra.append(f"models={','.join(view['models'])}")
    if view["ip"]:
        extra.append(f"ip={','.join(view['ip'])}")
    extra += [f"label:{k}={v}" for k, v in sorted(view["labels"].items())]
    if view["replaced_by"] is not None:
        extra.append(f"replaced-by={view['replaced_by']}")
    extra.append(f"last-used={iso(view['last_used_at']) if view['last_used_at'] else 'never'}")
    return "\t".join([*parts, " ".join(extra)])


@click.group()
def keys() -> None:
    """Manage API keys and their limits."""


@keys.command("create")
@click.option("--account", "account", required=True)
@click.option("--name", "label", default=None)
@setting_options(clear=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_create(ctx: click.Context, account: str, label: str | None, as_json: bool, **kw: Any) -> None:
    """Create a key (printed once)."""
    from ..store.accounts import create_key, get_account
    from ..store.audit_log import record
    from ..store.keys import key_view

    changes = _changes(ctx, kw, clear=False)
    now = _now(ctx)

    async def go(s: Any) -> tuple[dict[str, Any], str] | None:
        acct = await get_account(s, account)
        if acct is None:
            return None
        row, key = await create_key(s, acct, label, changes)
        view = key_view(row, acct.name, now)
        await record(s, cli_actor(), "key.create", f"key:{row.id}", None, view, now)
        return view, key

    out = run_db(ctx, go)
    if out is None:
        fail(f"no account named {account!r}; create it with: stepplan accounts create {account}")
    view, key = out
    if as_json:
        click.echo(json.dumps({**view, "key": key}))
    else:
        click.echo(f"key id {view['id']} for account {account} (shown once, store it now):\n{key}")


@keys.command("update")
@click.argument("key_id", type=int)
@setting_options(clear=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_update(ctx: click.Context, key_id: int, as_json: bool, **kw: Any) -> None:
    """Change a key's settings; --clear-OPTION removes one. Labels given are added to the key's."""
    from ..store.audit_log import record
    from ..store.keys import KeyNotFound, get_key, key_view, update_key

    changes = _changes(ctx, kw, clear=True)
    if not changes:
        fail("nothing to change: give at least one setting or --clear-OPTION")
    now = _now(ctx)

    async def go(s: Any) -> dict[str, Any]:
        found = await get_key(s, key_id)
        if found is None:
            raise KeyNotFound(f"no active key with id {key_id}")
        before = key_view(found[0], found[1], now)
        if "labels" in changes and changes["labels"] is not None and not kw.get("clear_labels"):
            changes["labels"] = {**before["labels"], **changes["labels"]}
        row = await update_key(s, key_id, changes, now)
        after = key_view(row, found[1], now)
        await record(s, cli_actor(), "key.update", f"key:{key_id}", before, after, now)
        return after

    try:
        view = run_db(ctx, go)
    except KeyNotFound as exc:
        fail(str(exc))
    announce_now(settings_from(ctx).redis_url)
    click.echo(json.dumps(view) if as_json else _show(view))


@keys.command("rotate")
@click.argument("key_id", type=int)
@click.option("--grace", default="24h", show_default=True,
              help="How long the old key keeps working: a duration such as 24h, 30m or 0s.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_rotate(ctx: click.Context, key_id: int, grace: str, as_json: bool) -> None:
    """Replace a key by a new one with the same settings (printed once); the old key works until the grace ends."""
    from ..billing.clock import iso
    from ..key_settings import parse_duration
    from ..store.audit_log import record
    from ..store.keys import KeyNotFound, get_key, key_view, rotate_key

    try:
        seconds = parse_duration(grace, "grace")
    except ValueError as exc:
        fail(str(exc))
    now = _now(ctx)

    async def go(s: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
        found = await get_key(s, key_id)
        if found is None:
            raise KeyNotFound(f"no active key with id {key_id}")
        before = key_view(found[0], found[1], now)
        old, new, secret = await rotate_key(s, key_id, seconds, now)
        old_view, new_view = key_view(old, found[1], now), key_view(new, found[1], now)
        await record(s, cli_actor(), "key.rotate", f"key:{key_id}", before, {**old_view, "new_key_id": new.id}, now)
        return old_view, new_view, secret

    try:
        old_view, new_view, secret = run_db(ctx, go)
    except (KeyNotFound, ValueError) as exc:
        fail(str(exc))
    announce_now(settings_from(ctx).redis_url)
    until = old_view["revoked_at"] is None and old_view["expires_at"]
    if as_json:
        click.echo(json.dumps({**new_view, "key": secret, "replaces": key_id, "old_key_valid_until": until or None}))
    else:
        ends = f"keeps working until {iso(until)}" if until else "was revoked now"
        click.echo(f"key id {new_view['id']} replaces key {key_id}, which {ends} (new key shown once, store it "
                   f"now):\n{secret}")


@keys.command("list")
@click.option("--account", "account", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx: click.Context, account: str | None, as_json: bool) -> None:
    """Keys with their status, limits and last use."""
    from ..store.accounts import get_account, list_keys
    from ..store.keys import key_view

    now = _now(ctx)

    async def go(s: Any) -> list[dict[str, Any]] | None:
        acct = await get_account(s, account) if account else None
        if account and acct is None:
            return None
        return [key_view(k, n, now) for k, n in await list_keys(s, acct)]

    rows = run_db(ctx, go)
    if rows is None:
        fail(f"no account named {account!r}")
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(_show(r))


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: int) -> None:
    """Revoke a key now (every process stops accepting it within the auth poll interval, or at once with Redis)."""
    from ..store.accounts import revoke_key
    from ..store.audit_log import record
    from ..store.keys import get_key, key_view

    now = _now(ctx)

    async def go(s: Any) -> bool:
        found = await get_key(s, key_id)
        before = key_view(found[0], found[1], now) if found else None
        if not await revoke_key(s, key_id):
            return False
        assert found is not None
        await s.refresh(found[0])
        await record(s, cli_actor(), "key.revoke", f"key:{key_id}", before, key_view(found[0], found[1], now), now)
        return True

    if not run_db(ctx, go):
        fail(f"no active key with id {key_id}")
    announce_now(settings_from(ctx).redis_url)
    click.echo(f"revoked key {key_id}")


def register(group: click.Group) -> None:
    group.add_command(keys)

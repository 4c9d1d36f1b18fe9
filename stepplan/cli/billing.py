"""Billing commands: ``plans list``, ``subscribe``, ``topup``, ``usage``, ``ledger check``."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click

from .main import fail, run_db, settings_from


def _cfg(ctx: click.Context) -> Any:
    from ..billing.plans import BillingConfig

    try:
        return BillingConfig.from_raw(settings_from(ctx).billing)
    except ValueError as exc:
        fail(f"bad [billing] config: {exc}")


def _now(ctx: click.Context) -> int:
    from ..billing.clock import Clock

    return Clock(settings_from(ctx).clock_offset).now()  # STEPPLAN_CLOCK_OFFSET, read by load_settings


async def _account_id(s: Any, name: str) -> int:
    from ..store.accounts import get_account

    acct = await get_account(s, name)
    if acct is None:
        raise click.ClickException(f"no account named {name!r}; create it with: stepplan accounts create {name}")
    return acct.id


def _time(value: str | None) -> int | None:
    """Unix seconds or an ISO date/time (UTC when no zone is given)."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither unix seconds nor an ISO date") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp())


@click.group()
def plans() -> None:
    """Step Plan tiers and top-up packs."""


@plans.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plans_list(ctx: click.Context, as_json: bool) -> None:
    from ..billing.plans import yuan
    from ..billing.pricing import credits_str

    cfg = _cfg(ctx)
    rows = [{"id": p.id, "name": p.name, "monthly_credits": credits_str(p.monthly_credits),
             "prices": {k: yuan(v) for k, v in p.prices.items()}, "priority_rate": p.priority,
             "concurrency": p.concurrency, "rpm": p.rpm, "window_5h_credits": credits_str(p.window_5h),
             "window_week_credits": credits_str(p.window_week)} for p in cfg.plans.values()]
    packs = [{"id": k.id, "name": k.name, "credits": credits_str(k.credits), "price": yuan(k.price), "days": k.days}
             for k in cfg.packs.values()]
    if as_json:
        click.echo(json.dumps({"plans": rows, "packs": packs}))
        return
    for r in rows:
        prices = ", ".join(f"{k} ¥{v}" for k, v in r["prices"].items())
        limits = f"concurrency {r['concurrency'] or '∞'}, {r['rpm'] or '∞'} rpm"
        click.echo(f"{r['id']:<12} {r['name']:<12} {int(r['monthly_credits']):>14,} credits/month  {prices}  "
                   f"[{limits}{', priority rate' if r['priority_rate'] else ''}]")
    for k in packs:
        click.echo(f"pack {k['id']:<7} {k['name']:<16} {int(k['credits']):>14,} credits  ¥{k['price']}  "
                   f"valid {k['days']} days (subscribers only)")


@click.command()
@click.argument("account")
@click.option("--plan", "plan_id", required=True, help="Plan id (stepplan plans list).")
@click.option("--period", type=click.Choice(["monthly", "quarterly", "yearly"]), default=None,
              help="Billing period (default monthly; an upgrade keeps the current one).")
@click.option("--auto-renew/--no-auto-renew", default=None, help="Renew the term when it ends.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def subscribe(ctx: click.Context, account: str, plan_id: str, period: str | None, auto_renew: bool | None,
              as_json: bool) -> None:
    """Subscribe ACCOUNT to a plan, upgrade it now, or downgrade it at the next cycle."""
    from ..billing.subscriptions import BillingError
    from ..billing.subscriptions import subscribe as do_subscribe

    cfg, now = _cfg(ctx), _now(ctx)

    async def go(s: Any) -> Any:
        from ..store.audit_log import record, subscription_state
        from .actor import cli_actor

        account_id = await _account_id(s, account)
        before = await subscription_state(s, account_id)
        result = await do_subscribe(s, cfg, account_id, plan_id, period, now, auto_renew)
        await record(s, cli_actor(), "subscription.set", f"account:{account}", before,
                     await subscription_state(s, account_id), now)
        return result

    try:
        result = run_db(ctx, go)
    except BillingError as exc:
        fail(str(exc))
        return
    click.echo(json.dumps(result.as_dict()) if as_json else f"{account}: {result.describe()}")


@click.command()
@click.argument("account")
@click.option("--pack", "pack_id", required=True, help="Pack id: small | large (stepplan plans list).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def topup(ctx: click.Context, account: str, pack_id: str, as_json: bool) -> None:
    """Add a top-up pack to ACCOUNT (subscribers only; valid 30 days)."""
    from ..billing.clock import iso
    from ..billing.plans import yuan
    from ..billing.pricing import credits_str
    from ..billing.subscriptions import BillingError
    from ..billing.subscriptions import topup as do_topup

    cfg, now = _cfg(ctx), _now(ctx)

    async def go(s: Any) -> dict[str, Any]:
        from ..store.audit_log import record
        from .actor import cli_actor

        pot = await do_topup(s, cfg, await _account_id(s, account), pack_id, now)
        out = {"bucket_id": pot.id, "pack": pack_id, "credits": credits_str(pot.total), "expire_at": pot.expires_at,
               "price": yuan(cfg.pack(pack_id).price)}
        await record(s, cli_actor(), "topup.create", f"account:{account}", None, out, now)
        return out

    try:
        out = run_db(ctx, go)
    except BillingError as exc:
        fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"{account}: added {out['credits']} credits (pack {pack_id}, ¥{out['price']}), "
                   f"expires {iso(out['expire_at'])}")


@click.command()
@click.argument("account")
@click.option("--from", "since", default=None, help="Start of the usage range (unix seconds or ISO date).")
@click.option("--to", "until", default=None, help="End of the usage range (exclusive).")
@click.option("--model", default=None, help="Only this model (requested or served).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def usage(ctx: click.Context, account: str, since: str | None, until: str | None, model: str | None,
          as_json: bool) -> None:
    """Show ACCOUNT's plan, credit buckets and usage."""
    from ..billing.usage import account_usage, describe

    cfg, now = _cfg(ctx), _now(ctx)
    t0, t1 = _time(since), _time(until)

    async def go(s: Any) -> dict[str, Any]:
        return await account_usage(s, cfg, await _account_id(s, account), now, since=t0, until=t1, model=model)

    view = run_db(ctx, go)
    click.echo(json.dumps(view) if as_json else describe(view))


@click.group()
def ledger() -> None:
    """The usage ledger."""


@ledger.command("check")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ledger_check(ctx: click.Context, as_json: bool) -> None:
    """Verify that every balance is explained by the ledger; exit 1 if not."""
    from ..billing.check import check_ledger

    cfg = _cfg(ctx)

    async def go(s: Any) -> Any:
        return await check_ledger(s, cfg.owner_ttl_seconds, cfg.lease_idle_seconds)

    report = run_db(ctx, go)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for p in report.problems:
            click.echo(f"PROBLEM: {p}")
        stats = ", ".join(f"{k}={v}" for k, v in report.stats.items())
        click.echo(f"ledger {'consistent' if report.ok else 'INCONSISTENT'}: {stats}")
    sys.exit(0 if report.ok else 1)


def register(group: click.Group) -> None:
    for cmd in (plans, subscribe, topup, usage, ledger):
        group.add_command(cmd)

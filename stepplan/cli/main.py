"""The ``stepplan`` command: one click group; each area adds its own subcommands."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click

from ..settings import LOG_LEVEL_ENV, LOG_LEVELS, Settings, load_settings

T = TypeVar("T")


def settings_from(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def run_db(ctx: click.Context, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(session)`` in one transaction on a migrated database."""
    from ..store.db import make_engine, sessionmaker
    from ..store.migrate import migrate

    settings = settings_from(ctx)

    async def go() -> T:
        engine = make_engine(settings.database_url)
        try:
            await migrate(engine)
            async with sessionmaker(engine)() as s:
                result = await fn(s)
                await s.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(go())


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    import re

    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def load_or_fail(config: str | None) -> Settings:
    """The settings, or one line naming the file and the key and exit status 1 (no traceback)."""
    try:
        return load_settings(config)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        fail(f"cannot load config: {exc}")


@click.group()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, envvar="STEPPLAN_CONFIG",
              help="TOML config file (default: embedded defaults).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """stepplan: a self-hosted Step Plan gateway."""
    ctx.obj = {"settings": load_or_fail(config), "config": config}


@cli.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="TOML config file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--log-level", default=None)
@click.pass_context
def serve(ctx: click.Context, config: str | None, host: str, port: int, workers: int, log_level: str | None) -> None:
    """Start the gateway."""
    import uvicorn

    from ..logs import setup_logging
    from ..store.db import make_engine
    from ..store.migrate import migrate

    if config:
        ctx.obj["settings"] = load_or_fail(config)
        ctx.obj["config"] = config
    settings = settings_from(ctx)
    level = (log_level or settings.log_level).lower()
    if level not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
    # Worker processes load the settings again (app_factory): hand them the file and the level.
    if ctx.obj["config"]:
        os.environ["STEPPLAN_CONFIG"] = os.path.abspath(ctx.obj["config"])
    os.environ[LOG_LEVEL_ENV] = level
    setup_logging(level, settings.log_format)
    from ..logs import add_secrets

    add_secrets(settings.secrets())
    metrics_dir = None
    if settings.metrics:
        from ..observability.metrics import prepare_multiprocess_dir

        # before prometheus-client is imported anywhere in this process or a worker
        metrics_dir = prepare_multiprocess_dir()

    async def prepare() -> None:
        engine = make_engine(settings.database_url)
        await migrate(engine)
        await engine.dispose()

    raise_fd_limit()  # every open stream holds two sockets: the client's and the upstream's
    asyncio.run(prepare())  # migrate once, before any worker starts
    def say(message: str) -> None:  # JSON logs: start-up lines are log records too
        if settings.log_format == "json":
            import logging

            logging.getLogger("stepplan").warning("%s", message)
        else:
            click.echo(message, err=True)

    say(f"stepplan listening on http://{host}:{port} (workers={workers}, db={_safe_url(settings.database_url)})")
    metrics_server = None
    if metrics_dir is not None and settings.metrics_port:
        from ..observability.metrics import start_metrics_server

        try:
            metrics_server = start_metrics_server(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}")
        say(f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    from uvicorn.supervisors import Multiprocess

    from ..http_guard import GuardedHttpToolsProtocol, Limits

    # JSON logs: uvicorn's own records go through the root logger's JSON formatter too
    extra: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}
    cfg = uvicorn.Config("stepplan.app:app_factory", factory=True, host=host, port=port, workers=workers,
                         loop="uvloop", http=GuardedHttpToolsProtocol,
                         log_level="warning" if level == "info" else level, access_log=False,
                         timeout_keep_alive=75, backlog=4096,
                         proxy_headers=False,  # client addresses are not used: skip the per-request middleware
                         **extra)
    cfg.stepplan_limits = Limits(settings.max_headers, settings.max_header_bytes,  # type: ignore[attr-defined]
                                 settings.header_timeout, settings.body_timeout)
    server = uvicorn.Server(cfg)
    try:  # what uvicorn.run does, with our Config (it travels to each worker process)
        if workers > 1:
            Multiprocess(cfg, sockets=[cfg.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if metrics_dir is not None:
            from ..observability.metrics import remove_multiprocess_dir

            remove_multiprocess_dir(metrics_dir)
    if workers == 1 and not server.started:
        sys.exit(3)  # uvicorn's start-up failure code


# ------------------------------------------------------------------ accounts (keys: cli/keys.py)
@cli.group()
def accounts() -> None:
    """Manage accounts."""


@accounts.command("create")
@click.argument("name")
@click.pass_context
def accounts_create(ctx: click.Context, name: str) -> None:
    from ..billing.clock import Clock
    from ..store.accounts import AccountExists, create_account
    from ..store.audit_log import record
    from .actor import cli_actor

    async def go(s: Any) -> int:
        a = await create_account(s, name)
        await record(s, cli_actor(), "account.create", f"account:{name}", None, {"id": a.id, "name": name},
                     Clock(settings_from(ctx).clock_offset).now())
        return a.id

    try:
        acct_id = run_db(ctx, go)
    except AccountExists as exc:
        fail(str(exc))
    click.echo(f"created account {name} (id {acct_id})")


@accounts.command("list")
@click.pass_context
def accounts_list(ctx: click.Context) -> None:
    from sqlalchemy import select

    from ..store.models import Account

    async def go(s: Any) -> list[Any]:
        return list((await s.execute(select(Account).order_by(Account.id))).scalars())

    for a in run_db(ctx, go):
        click.echo(f"{a.id}\t{a.name}")


def main() -> None:
    from . import register_all

    register_all(cli)
    cli()

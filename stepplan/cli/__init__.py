"""Command-line interface. Each area registers its command group here."""

from __future__ import annotations

import click


def register_all(group: click.Group) -> None:
    from .router import router

    group.add_command(router)
    try:
        from .billing import register
    except ImportError:  # the billing commands live in their own module
        return
    register(group)

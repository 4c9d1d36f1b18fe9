"""Command-line interface. Each area registers its command group here."""

from __future__ import annotations

import click


def register_all(group: click.Group) -> None:
    from .doctor import register as register_doctor
    from .governance import register as register_governance
    from .keys import register as register_keys
    from .router import router

    group.add_command(router)
    register_doctor(group)
    register_keys(group)
    register_governance(group)
    try:
        from .billing import register
    except ImportError:  # the billing commands live in their own module
        return
    register(group)

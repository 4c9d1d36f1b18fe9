"""Who a CLI change is recorded as in the audit log."""

from __future__ import annotations


def cli_actor() -> str:
    """``cli:<operating-system user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"

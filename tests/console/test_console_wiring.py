"""The console leaves the model-serving path alone: no middleware, model calls still dispatched by
HotPath before Starlette, console routes registered after the API's, and none with [console]
enabled = false."""

from __future__ import annotations

from starlette.routing import Route

from stepplan.app import HOT_PATHS, HotPath, TraceAndLimit, create_app, routes
from stepplan.settings import Settings


def test_console_adds_no_middleware_and_sits_after_the_api() -> None:
    outer = create_app(Settings(), migrate=False)
    assert isinstance(outer, TraceAndLimit) and isinstance(outer.app, HotPath)
    app = outer.app.app
    assert app.user_middleware == []
    assert set(outer.app.routes) == HOT_PATHS  # model calls never reach Starlette's router
    paths = [r.path for r in app.routes if isinstance(r, Route)]
    first_console = next(i for i, p in enumerate(paths) if p.startswith("/console"))
    assert all(not p.startswith("/console") for p in paths[:first_console])
    assert all(p.startswith("/console") for p in paths[first_console:])
    assert max(paths.index(p) for p in HOT_PATHS) < first_console


def test_console_can_be_switched_off() -> None:
    s = Settings()
    s.console.enabled = False
    assert not [r for r in routes(s) if r.path.startswith("/console")]


def test_message_ids_do_not_shadow_dict_methods() -> None:
    """Templates read messages as ``t.NAME``; Jinja resolves a dict's attribute first, so an id such as
    ``clear`` or ``items`` would render the bound method instead of the text."""
    from stepplan.console.i18n import MESSAGES

    assert [k for k in MESSAGES if hasattr(dict, k)] == []

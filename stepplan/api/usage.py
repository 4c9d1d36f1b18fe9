"""``GET /step_plan/v1/usage``: a key holder's plan, credit buckets, left rates and usage.

Query parameters (all optional): ``from`` and ``to`` (unix seconds or ISO dates; the
range is ``[from, to)``, default: the current term so far) and ``model`` (only calls that
requested or were served by this model).
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from ..billing.clock import Clock
from ..billing.plans import BillingConfig
from ..billing.usage import account_usage
from ..errors import InvalidRequest
from .common import authenticate
from .responses import JSONResponse


def parse_time(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be unix seconds or an ISO 8601 date/time, not {value!r}",
                             param=name) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp())


def billing_config(request: HTTPRequest) -> BillingConfig:
    state = request.app.state
    cfg = getattr(state, "billing_config", None)
    if cfg is None:
        cfg = state.billing_config = BillingConfig.from_raw(state.settings.billing)
    return cfg


def billing_clock(request: HTTPRequest) -> Clock:
    """The meter's clock; without a metering meter, the one the settings read from the environment
    once (``STEPPLAN_CLOCK_OFFSET``/``STEPPLAN_CLOCK_AT``), so it advances like the meter's would."""
    meter = request.app.state.gateway.meter
    clock = getattr(meter, "clock", None)
    return clock if isinstance(clock, Clock) else Clock(request.app.state.settings.clock_offset)


async def usage(request: HTTPRequest) -> Response:
    key = await authenticate(request)
    qp = request.query_params
    since, until = parse_time(qp.get("from"), "from"), parse_time(qp.get("to"), "to")
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("'to' must be after 'from'", param="to")
    cfg = billing_config(request)
    now = billing_clock(request).now()
    async with request.app.state.sessions() as s:
        view = await account_usage(s, cfg, key.account_id, now, since=since, until=until, model=qp.get("model"))
        await s.commit()
    view["account"] = key.account_name
    return JSONResponse(view)


ROUTES: list = [("/step_plan/v1/usage", usage, ["GET"])]

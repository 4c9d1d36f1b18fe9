"""Per-key settings as an administrator writes them (CLI options, admin API fields): parsed and
checked here, once, into the values stored on ``api_keys`` (docs/security.md).

Every parser raises :class:`ValueError` with a message that names the setting; the CLI prints it,
the admin API answers 400 with it. Credit amounts are exact decimals in Credit (at most 6
places), stored as integer micro-credits.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from .billing.clock import parse_instant
from .billing.pricing import LEDGER_MAX, MICRO
from .store.keys import credits_exact as credits_exact  # re-exported: shown as the CLI parses it

# The settings, by the name the CLI (``--NAME`` with '-') and the admin API (``NAME``) use.
SETTINGS = ("expires", "models", "rpm", "concurrency", "credit_limit_daily", "credit_limit_monthly", "ip",
            "labels")
# The api_keys column each setting is stored in.
COLUMNS = {"expires": "expires_at", "models": "models", "rpm": "rpm", "concurrency": "concurrency",
           "credit_limit_daily": "credit_limit_daily", "credit_limit_monthly": "credit_limit_monthly",
           "ip": "ip_allow", "labels": "labels"}
# What a cleared setting is stored as (no limit).
CLEARED: dict[str, Any] = {"expires_at": None, "models": None, "rpm": 0, "concurrency": 0,
                           "credit_limit_daily": None, "credit_limit_monthly": None, "ip_allow": None,
                           "labels": None}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,64}$")


def parse_duration(raw: str, name: str) -> int:
    """Seconds of a duration such as ``30d``, ``24h``, ``90m``, ``3600s`` or ``2w``."""
    m = _DURATION.match(str(raw))
    if not m:
        raise ValueError(f"{name} must be a duration such as 30d, 24h, 90m or 3600s, not {raw!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_expires(raw: str, now: int) -> int:
    """An expiry instant (billing-clock seconds): an ISO date or date-time, or a duration from ``now``."""
    raw = str(raw).strip()
    if _DURATION.match(raw):
        seconds = parse_duration(raw, "expires")
        if seconds <= 0:
            raise ValueError("expires must be a positive duration")
        return now + seconds
    try:
        at = parse_instant(raw, "expires")
    except ValueError:
        raise ValueError(f"expires must be an ISO date (2027-01-01), a date-time, or a duration such as "
                         f"30d, not {raw!r}") from None
    if at <= now:
        raise ValueError(f"expires {raw!r} is in the past")
    return at


def parse_models(raw: str | Iterable[str], known: Iterable[str]) -> list[str]:
    """A model allowlist: comma-separated (CLI) or a list (API), each a model of the catalog."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names: list[str] = []
    catalog = set(known)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("models must be model ids separated by commas, e.g. step-3.5-flash,step-router-v1")
        name = item.strip()
        if name not in catalog:
            raise ValueError(f"models: {name!r} is not a model of this gateway's catalog")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("models must name at least one model (use --clear-models to allow every model)")
    return names


def parse_count(raw: Any, name: str) -> int:
    """A positive whole number (rpm, concurrency)."""
    if isinstance(raw, bool):
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}")
    try:
        n = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}") from None
    if not 0 < n <= 1_000_000_000:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}")
    return n


def parse_credits(raw: Any, name: str) -> int:
    """An amount in Credit (exact decimal, at most 6 places) → micro-credits."""
    if isinstance(raw, (bool, float)):
        raise ValueError(f"{name} must be an amount of Credit written as a string or integer, e.g. \"50\" or "
                         f"\"12.5\", not {raw!r}")
    try:
        d = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"{name} must be an amount of Credit such as 50 or 12.5, not {raw!r}") from None
    if not d.is_finite() or d <= 0:
        raise ValueError(f"{name} must be a positive amount of Credit, not {raw!r}")
    micro = d * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{name} {raw!r} has more than 6 decimal places")
    if micro > LEDGER_MAX:
        raise ValueError(f"{name} {raw!r} is larger than the ledger can hold")
    return int(micro)


def parse_cidrs(raw: str | Iterable[str]) -> list[str]:
    """Client networks: CIDRs (or single addresses), comma-separated or a list; normalised."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    nets: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("ip must be networks such as 10.0.0.0/8 or 2001:db8::/32, separated by commas")
        try:
            net = str(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"ip: {item.strip()!r} is not an IP address or CIDR network") from None
        if net not in nets:
            nets.append(net)
    if not nets:
        raise ValueError("ip must name at least one network (use --clear-ip to allow any address)")
    return nets


def parse_labels(raw: Iterable[str] | dict[str, Any]) -> dict[str, str]:
    """Labels: ``k=v`` strings (CLI) or an object of strings (API)."""
    pairs: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        pairs = []
        for item in raw:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"label must look like key=value, not {item!r}")
            k, _, v = item.partition("=")
            pairs.append((k.strip(), v.strip()))
    labels: dict[str, str] = {}
    for k, v in pairs:
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise ValueError(f"label key {k!r} must be 1-64 letters, digits or . _ - /")
        if not isinstance(v, str) or len(v) > 256:
            raise ValueError(f"label {k!r} must have a string value of at most 256 characters")
        labels[k] = v
    return labels


def parse_setting(name: str, raw: Any, now: int, models: Iterable[str]) -> tuple[str, Any]:
    """One setting as given → (api_keys column, value to store)."""
    if name == "expires":
        return "expires_at", parse_expires(raw, now)
    if name == "models":
        return "models", parse_models(raw, models)
    if name in ("rpm", "concurrency"):
        return name, parse_count(raw, name)
    if name in ("credit_limit_daily", "credit_limit_monthly"):
        return name, parse_credits(raw, name)
    if name == "ip":
        return "ip_allow", parse_cidrs(raw)
    if name == "labels":
        return "labels", parse_labels(raw)
    raise ValueError(f"unknown key setting {name!r}; known: {', '.join(SETTINGS)}")


class SettingError(ValueError):
    """A setting that does not parse; ``param`` names it (the admin API's error ``param``)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def parse_changes(values: dict[str, Any], now: int, models: Iterable[str], *, clearing: bool) -> dict[str, Any]:
    """The settings present in ``values`` (setting name → raw value; None clears it when
    ``clearing``, else is skipped) → api_keys column → value, ready for
    :func:`stepplan.store.keys.update_key`. The admin API and the console both go through here."""
    known = list(models)
    out: dict[str, Any] = {}
    for name in SETTINGS:
        if name not in values:
            continue
        raw = values[name]
        if raw is None:
            if clearing:
                out[COLUMNS[name]] = CLEARED[COLUMNS[name]]
            continue
        try:
            column, value = parse_setting(name, raw, now, known)
        except ValueError as exc:
            raise SettingError(name, str(exc)) from None
        out[column] = value
    return out


def parse_since(raw: str | None, now: int) -> int | None:
    """A ``since`` bound (audit log): an ISO date or date-time, or a duration back from ``now`` (24h, 7d)."""
    if raw is None or not raw.strip():
        return None
    if _DURATION.match(raw):
        return now - parse_duration(raw, "since")
    try:
        return parse_instant(raw, "since")
    except ValueError:
        raise ValueError(f"since must be an ISO date (2026-12-01), a date-time or a duration such as 24h, "
                         f"not {raw!r}") from None

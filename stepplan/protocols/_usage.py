"""Upstream usage counts, validated before anything is billed from them.

A count is valid when it is absent/null (0) or a non-negative JSON integer no larger than
:data:`MAX_COUNT`. Anything else (negative, fractional, a string, a boolean, an absurd
number) is an upstream defect: the whole usage is then treated as unknown, the call is
counted locally, and the defect is logged. Whether a valid count's *cost* fits the ledger
is the pricing's question (:meth:`stepplan.billing.pricing.PriceBook.billable`).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("stepplan.upstream")

MAX_COUNT = 2**53  # beyond any real context window; also the largest integer JSON round-trips exactly


class BadCount(ValueError):
    pass


def count(u: dict[str, Any], key: str) -> int:
    """``u[key]`` as a token count: 0 when absent or null; raises BadCount when invalid."""
    v = u.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_COUNT:
        raise BadCount(f"{key}={v!r}")
    return v


def defect(protocol: str, exc: BadCount, raw: Any) -> None:
    log.warning("upstream defect: %s usage has an invalid count (%s); the call is counted locally: %.300r",
                protocol, exc, raw)

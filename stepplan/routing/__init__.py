"""``step-router-v1``: request features, the learned scorer and the routing policy.

The heavy parts load lazily: importing this package reads no weights; the
first :class:`RouterScorer` (or :func:`default_scorer`) does.
"""

from stepplan.routing.policy import (
    DEFAULT_PRO_SHARE,
    FLASH_ENGINE,
    PRO_ENGINE,
    RouteDecision,
    RouteInput,
    RouterPolicy,
    route_input_from_openai_messages,
    threshold_for_pro_share,
)
from stepplan.routing.scorer import RouterScorer, default_scorer

__all__ = [
    "DEFAULT_PRO_SHARE",
    "FLASH_ENGINE",
    "PRO_ENGINE",
    "RouteDecision",
    "RouteInput",
    "RouterPolicy",
    "RouterScorer",
    "default_scorer",
    "route_input_from_openai_messages",
    "threshold_for_pro_share",
]

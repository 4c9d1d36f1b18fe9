"""``step-router-v1``: request features, the learned scorer and the routing policy.

Modules: ``types`` (RouteInput, RouteDecision, RouteChoice, Scorer), ``inputs`` (the one builder
of a RouteInput, for serving and training), ``features`` (RouteInput → feature vector),
``scorer`` (features → P(pro)), ``policy`` (threshold_for_pro_share, score → engine),
``route`` (the gateway's Router: field rules, stickiness, fallback order).

The heavy parts load lazily: importing this package reads no weights; the
first :class:`RouterScorer` (or :func:`default_scorer`) does.
"""

from stepplan.routing.inputs import route_input, route_input_from_openai_messages
from stepplan.routing.policy import DEFAULT_PRO_SHARE, FLASH_ENGINE, PRO_ENGINE, RouterPolicy, threshold_for_pro_share
from stepplan.routing.scorer import RouterScorer, default_scorer
from stepplan.routing.types import RouteChoice, RouteDecision, RouteInput

__all__ = [
    "DEFAULT_PRO_SHARE",
    "FLASH_ENGINE",
    "PRO_ENGINE",
    "RouteChoice",
    "RouteDecision",
    "RouteInput",
    "RouterPolicy",
    "RouterScorer",
    "default_scorer",
    "route_input",
    "route_input_from_openai_messages",
    "threshold_for_pro_share",
]

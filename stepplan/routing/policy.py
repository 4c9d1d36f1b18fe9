"""Routing policy for ``step-router-v1``: decision and thresholds.

The policy turns a score P(pro) from :class:`~stepplan.routing.scorer.RouterScorer`
into an engine choice.  The threshold can be set directly or derived from a
target Pro share with :func:`threshold_for_pro_share` (the one implementation; the
scorer, the router and ``bench/router`` all call it) or :meth:`RouterPolicy.for_pro_share`.

The request types live in :mod:`stepplan.routing.types` and the one builder of a
:class:`RouteInput` in :mod:`stepplan.routing.inputs`; both are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .inputs import route_input_from_openai_messages
from .types import RouteDecision, RouteInput, Scorer

__all__ = [
    "DEFAULT_PRO_SHARE",
    "FLASH_ENGINE",
    "PRO_ENGINE",
    "RouteDecision",
    "RouteInput",
    "RouterPolicy",
    "Scorer",
    "route_input_from_openai_messages",
    "threshold_for_pro_share",
]

PRO_ENGINE = "deepseek-v4-pro"
# The Step Plan page this product implements routes between deepseek-v4-pro and step-3.5-flash
# (and bills a flash hit as step-3.5-flash); a later StepFun page names step-3.7-flash, which is
# one line of config away: [router] flash_engine = "step-3.7-flash".
FLASH_ENGINE = "step-3.5-flash"
DEFAULT_PRO_SHARE = 0.3


def threshold_for_pro_share(share: float, quantiles: Sequence[float] | None = None) -> float:
    """Score threshold that sends about ``share`` of traffic to Pro.

    ``quantiles`` are ``q[i]`` = the ``i/(n-1)`` quantile of the reference
    score distribution (ascending, as stored in ``weights.json``); by default
    those of the shipped weights.  A request goes to Pro when
    ``score >= threshold``; the threshold is the ``1 - share`` quantile,
    linearly interpolated.  ``share <= 0`` returns a threshold above every
    score (never Pro), ``share >= 1`` returns 0.0 (always Pro).
    """
    if quantiles is None:
        from stepplan.routing.scorer import default_scorer

        quantiles = default_scorer().score_quantiles
    if not quantiles:
        raise ValueError("empty score quantiles")
    if math.isnan(share):
        raise ValueError("share is NaN")
    if share <= 0.0:
        return 1.0 + 1e-9
    if share >= 1.0:
        return 0.0
    n = len(quantiles)
    if n == 1:
        return float(quantiles[0])
    pos = (1.0 - share) * (n - 1)
    lo = int(pos)
    if lo >= n - 1:
        return float(quantiles[-1])
    frac = pos - lo
    return float(quantiles[lo] + (quantiles[lo + 1] - quantiles[lo]) * frac)


class RouterPolicy:
    """Send a request to Pro when its score is at or above ``threshold``.

    Scores lie in [0, 1]: a threshold above 1 never picks Pro, 0 always does.
    ``reason`` is machine-readable: ``score=0.6120>=0.6003`` or
    ``score=0.5710<0.6003``.
    """

    def __init__(
        self,
        scorer: Scorer,
        threshold: float,
        pro_engine: str = PRO_ENGINE,
        flash_engine: str = FLASH_ENGINE,
    ) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.scorer = scorer
        self.threshold = float(threshold)
        self.pro_engine = pro_engine
        self.flash_engine = flash_engine

    @classmethod
    def for_pro_share(
        cls,
        scorer: Any,
        share: float = DEFAULT_PRO_SHARE,
        pro_engine: str = PRO_ENGINE,
        flash_engine: str = FLASH_ENGINE,
    ) -> RouterPolicy:
        """Policy whose threshold targets ``share`` Pro calls on the scorer's
        reference score distribution."""
        quantiles = getattr(scorer, "score_quantiles", None) or None
        return cls(scorer, threshold_for_pro_share(share, quantiles), pro_engine, flash_engine)

    def set_pro_share(self, share: float) -> None:
        """Retarget ``share`` Pro calls on the scorer's reference score distribution (or the
        shipped one if the scorer has none)."""
        self.threshold = threshold_for_pro_share(share, getattr(self.scorer, "score_quantiles", None) or None)

    def decide(self, inp: RouteInput) -> RouteDecision:
        score = self.scorer.score(inp)
        if score >= self.threshold:
            return RouteDecision(self.pro_engine, score, f"score={score:.4f}>={self.threshold:.4f}")
        return RouteDecision(self.flash_engine, score, f"score={score:.4f}<{self.threshold:.4f}")

"""The ``step-router-v1`` scorer: P(pro) in [0, 1] for a request.

Model (trained by ``bench/router/train.py``, stored in ``weights.json``): two
L2-regularised logistic regressions over the standardised features of
:mod:`stepplan.routing.features`, one for "the strong model answers well"
(``strong``) and one for "the weak model answers well" (``weak``).  Their
difference estimates the expected quality gain of Pro over Flash, which is
what the router should rank by; the score is ``(1 + p_strong - p_weak) / 2``.

Features the development data cannot teach (conversation turns, tools,
thinking, effort, system prompt) carry small hand-set ``prior`` weights,
added in logit space, so agentic and explicitly high-effort requests lean
towards Pro.

Pure Python; weights are loaded once; one :meth:`RouterScorer.score` call is
a feature pass plus two dot products of a few dozen terms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from stepplan.routing.features import FEATURES, extract
from stepplan.routing.policy import RouteInput, threshold_for_pro_share

WEIGHTS_PATH = Path(__file__).with_name("weights.json")
FORMAT = "stepplan-router/1"


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class RouterScorer:
    """Scores requests with the shipped (or given) weights."""

    def __init__(self, weights: Mapping[str, Any] | str | Path | None = None) -> None:
        if weights is None or isinstance(weights, (str, Path)):
            path = Path(weights) if weights is not None else WEIGHTS_PATH
            with path.open("rb") as fh:
                weights = json.load(fh)
        assert isinstance(weights, Mapping)
        if weights.get("format") != FORMAT:
            raise ValueError(f"unsupported router weights format {weights.get('format')!r}")
        names = list(weights["features"])
        index = {name: i for i, name in enumerate(FEATURES)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"weights use unknown features: {missing}")
        self._cols: tuple[int, ...] = tuple(index[n] for n in names)
        self._mean: tuple[float, ...] = tuple(float(v) for v in weights["mean"])
        self._inv_scale: tuple[float, ...] = tuple(1.0 / float(v) if float(v) > 0 else 0.0 for v in weights["scale"])
        self._clip = float(weights.get("clip", 4.0))
        strong, weak = weights["strong"], weights["weak"]
        self._ws: tuple[float, ...] = tuple(float(v) for v in strong["coef"])
        self._ww: tuple[float, ...] = tuple(float(v) for v in weak["coef"])
        self._bs = float(strong["intercept"])
        self._bw = float(weak["intercept"])
        n = len(names)
        if not (len(self._mean) == len(self._inv_scale) == len(self._ws) == len(self._ww) == n):
            raise ValueError("router weights: length mismatch")
        prior = weights.get("prior", {})
        self._prior: tuple[tuple[int, float], ...] = tuple(
            (index[name], float(w)) for name, w in sorted(prior.items()) if float(w) != 0.0
        )
        self.score_quantiles: list[float] = [float(v) for v in weights.get("score_quantiles", [])]
        self.default_pro_share = float(weights.get("default_pro_share", 0.3))
        self.meta: dict[str, Any] = dict(weights.get("training", {}))

    def components(self, x: Sequence[float]) -> tuple[float, float, float]:
        """``(p_strong, p_weak, prior_logit)`` for a feature vector."""
        zs, zw = self._bs, self._bw
        clip = self._clip
        for col, mu, inv, ws, ww in zip(self._cols, self._mean, self._inv_scale, self._ws, self._ww, strict=True):
            z = (x[col] - mu) * inv
            if z != z:  # undefined feature (NaN): treat as average
                continue
            if z > clip:
                z = clip
            elif z < -clip:
                z = -clip
            zs += ws * z
            zw += ww * z
        adj = 0.0
        for col, w in self._prior:
            v = x[col]
            if v == v:
                adj += w * v
        return _sigmoid(zs), _sigmoid(zw), adj

    def score_features(self, x: Sequence[float]) -> float:
        ps, pw, adj = self.components(x)
        base = 0.5 * (1.0 + ps - pw)
        if adj:
            base = min(max(base, 1e-6), 1.0 - 1e-6)
            base = _sigmoid(math.log(base / (1.0 - base)) + adj)
        return min(max(base, 0.0), 1.0)

    def score(self, inp: RouteInput) -> float:
        """P(pro) in [0, 1]; higher means Pro is more likely to be worth it."""
        return self.score_features(extract(inp))

    def threshold_for_pro_share(self, share: float) -> float:
        return threshold_for_pro_share(share, self.score_quantiles)


@lru_cache(maxsize=1)
def default_scorer() -> RouterScorer:
    """The scorer with the shipped weights (loaded once per process)."""
    return RouterScorer()

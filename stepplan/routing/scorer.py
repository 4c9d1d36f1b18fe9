"""The ``step-router-v1`` scorer: P(pro) in [0, 1] for a request.

Model (trained by ``bench/router/train.py``, stored in ``weights.json``): two
estimates of the expected quality gain of Pro over Flash, ``E[strong - weak |
request]``, which is exactly what the router should rank by:

* ``linear``: a ridge regression on the standardised features
  (:mod:`stepplan.routing.features`, clipped at a few standard deviations);
* ``trees``: a small ensemble of shallow gradient-boosted regression trees on
  the raw features (undefined values, NaN, follow each split's learned
  missing-value branch).

Each estimate is mapped to its rank among the training items (an empirical
CDF stored as quantiles) and the two ranks are averaged with fixed weights, so
the score is a rank blend in [0, 1].  Features the development data cannot
teach (conversation turns, tools, thinking, effort) carry small hand-set
``prior`` weights, added in logit space, so agentic and explicitly
high-effort requests lean towards Pro.

Pure Python; weights are loaded once; one :meth:`RouterScorer.score` call is
a feature pass, a dot product of a few dozen terms and a few hundred tree-node
comparisons.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from stepplan.routing.features import FEATURES, extract
from stepplan.routing.types import RouteInput

WEIGHTS_PATH = Path(__file__).with_name("weights.json")
FORMAT = "stepplan-router/2"

#: A tree: a leaf value, or a split ``(feature column, threshold, NaN goes
#: left, left subtree, right subtree)`` where ``x <= threshold`` goes left.
Tree = float | tuple[Any, ...]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def cdf(value: float, quantiles: Sequence[float]) -> float:
    """Rank of ``value`` in a distribution given by ``n`` ascending quantiles
    at probabilities ``i / (n - 1)``, in [0, 1], linearly interpolated; a value
    that equals a run of tied quantiles gets the middle of the run."""
    n = len(quantiles)
    if n < 2:
        return 0.5
    lo = bisect_left(quantiles, value)
    hi = bisect_right(quantiles, value)
    if lo != hi:  # on one or more quantiles: middle of the tied run
        return (lo + hi - 1) / 2 / (n - 1)
    if lo == 0:
        return 0.0
    if lo == n:
        return 1.0
    a, b = quantiles[lo - 1], quantiles[lo]
    return (lo - 1 + (value - a) / (b - a)) / (n - 1)


def _number(v: Any, what: str) -> float:
    f = float(v)
    if f != f:
        raise ValueError(f"router weights: {what} is NaN")
    return f


def _literal(v: float) -> str:
    """Python source for a float, infinities included (a split on missing
    values only has threshold +inf)."""
    if math.isinf(v):
        return "1e999" if v > 0 else "-1e999"
    return repr(v)


def _tree(flat: Sequence[Sequence[float]], index: Mapping[str, int], names: Sequence[str]) -> Tree:
    """Nested form of one exported tree (a flat node list, root first; a leaf is
    ``[value]``, a split ``[feature, threshold, nan_left, left, right]``)."""

    def build(i: int, depth: int) -> Tree:
        if not 0 <= i < len(flat) or depth > 64:
            raise ValueError("router weights: malformed tree")
        node = flat[i]
        if len(node) == 1:
            value = _number(node[0], "leaf value")
            if math.isinf(value):
                raise ValueError("router weights: infinite leaf value")
            return value
        if len(node) != 5:
            raise ValueError("router weights: malformed tree node")
        col, thr, nan_left, left, right = node
        return (
            index[names[int(col)]],
            _number(thr, "threshold"),
            bool(nan_left),
            build(int(left), depth + 1),
            build(int(right), depth + 1),
        )

    return build(0, 0)


def compile_trees(trees: Sequence[Tree], baseline: float) -> Callable[[Sequence[float]], float]:
    """One Python function that sums the trees' leaves for a feature vector:
    straight-line ``if``/``else`` code, about three times faster than walking
    the node tuples.  The source is generated from numbers only (``repr`` of
    floats and ints already parsed from the weights file)."""
    lines = ["def _trees(x):", f"    t = {_literal(float(baseline))}"]

    def emit(node: Tree, indent: str) -> None:
        if not isinstance(node, tuple):
            lines.append(f"{indent}t += {_literal(float(node))}")
            return
        col, thr, nan_left, left, right = node
        v = f"x[{int(col)}]"
        cond = f"{v} <= {_literal(float(thr))}" + (f" or {v} != {v}" if nan_left else "")
        lines.append(f"{indent}if {cond}:")
        emit(left, indent + "    ")
        lines.append(f"{indent}else:")
        emit(right, indent + "    ")

    for tree in trees:
        emit(tree, "    ")
    lines.append("    return t")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<router-trees>", "exec"), namespace)
    fn: Callable[[Sequence[float]], float] = namespace["_trees"]
    return fn


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
        linear = weights["linear"]
        self._coef: tuple[float, ...] = tuple(float(v) for v in linear["coef"])
        self._intercept = float(linear["intercept"])
        if not (len(self._mean) == len(self._inv_scale) == len(self._coef) == len(names)):
            raise ValueError("router weights: length mismatch")
        trees = weights["trees"]
        self._baseline = _number(trees["baseline"], "tree baseline")
        self._trees: tuple[Tree, ...] = tuple(_tree(t, index, names) for t in trees["nodes"])
        self._tree_sum = compile_trees(self._trees, self._baseline)
        blend = weights["blend"]
        self._w_linear = float(blend["linear"]["weight"])
        self._w_trees = float(blend["trees"]["weight"])
        self._q_linear: list[float] = [float(v) for v in blend["linear"]["cdf"]]
        self._q_trees: list[float] = [float(v) for v in blend["trees"]["cdf"]]
        total = self._w_linear + self._w_trees
        if total <= 0 or self._w_linear < 0 or self._w_trees < 0:
            raise ValueError("router weights: blend weights must be non-negative with a positive sum")
        self._w_linear /= total
        self._w_trees /= total
        prior = weights.get("prior", {})
        self._prior: tuple[tuple[int, float], ...] = tuple(
            (index[name], float(w)) for name, w in sorted(prior.items()) if float(w) != 0.0
        )
        # the prior's mean over the training items, so that it moves typical requests by ~0
        self._prior_offset = float(weights.get("prior_offset", 0.0))
        self.score_quantiles: list[float] = [float(v) for v in weights.get("score_quantiles", [])]
        self.default_pro_share = float(weights.get("default_pro_share", 0.3))
        self.meta: dict[str, Any] = dict(weights.get("training", {}))

    def linear(self, x: Sequence[float]) -> float:
        """The ridge estimate of the gain."""
        z_sum = self._intercept
        clip = self._clip
        for col, mu, inv, w in zip(self._cols, self._mean, self._inv_scale, self._coef, strict=True):
            z = (x[col] - mu) * inv
            if z != z:  # undefined feature (NaN): treat as average
                continue
            if z > clip:
                z = clip
            elif z < -clip:
                z = -clip
            z_sum += w * z
        return z_sum

    def trees(self, x: Sequence[float]) -> float:
        """The tree-ensemble estimate of the gain."""
        return self._tree_sum(x)

    def prior(self, x: Sequence[float]) -> float:
        """The hand-set logit adjustment for traits the data cannot teach, less its
        mean over the training items."""
        adj = -self._prior_offset
        for col, w in self._prior:
            v = x[col]
            if v == v:
                adj += w * v
        return adj

    def blend(self, x: Sequence[float]) -> float:
        """Rank blend of the two estimates, before the prior."""
        return self._w_linear * cdf(self.linear(x), self._q_linear) + self._w_trees * cdf(self.trees(x), self._q_trees)

    def score_features(self, x: Sequence[float]) -> float:
        base = self.blend(x)
        adj = self.prior(x)
        if adj:
            base = min(max(base, 1e-4), 1.0 - 1e-4)
            base = _sigmoid(math.log(base / (1.0 - base)) + adj)
        return min(max(base, 0.0), 1.0)

    def score(self, inp: RouteInput) -> float:
        """P(pro) in [0, 1]; higher means Pro is more likely to be worth it."""
        return self.score_features(extract(inp))


@lru_cache(maxsize=1)
def default_scorer() -> RouterScorer:
    """The scorer with the shipped weights (loaded once per process)."""
    return RouterScorer()

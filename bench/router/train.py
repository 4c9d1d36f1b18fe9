"""Train the ``step-router-v1`` scorer and write ``stepplan/routing/weights.json``.

    .venv/bin/python bench/router/train.py [--data DIR] [--out FILE] [--alpha 300]

Reads the labelled development data (``*.jsonl`` with ``messages``,
``strong_score``, ``weak_score``; default ``../shared/router-data-dev`` next to
the repository).  Only ``messages`` feed the features; ``source`` is used for
sample weighting (each source counts equally) and for the reference score
distribution, never as a feature; ``id`` is not used at all.

Needs numpy and scikit-learn (the ``bench`` extra).  Deterministic: same data,
same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stepplan.routing.features import FEATURES, extract  # noqa: E402
from stepplan.routing.inputs import route_input_from_openai_messages  # noqa: E402
from stepplan.routing.scorer import FORMAT, WEIGHTS_PATH  # noqa: E402
from stepplan.routing.types import RouteInput  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

DEFAULT_DATA = ROOT.parent / "shared" / "router-data-dev"
SOURCES = ("mmlu", "gsm8k", "arc", "mbpp", "winogrande")
DEFAULT_ALPHA = 300.0
#: The tree ensemble (scikit-learn ``HistGradientBoostingRegressor``): shallow
#: trees, large leaves and a small learning rate, chosen by cross-validation.
TREES: dict[str, Any] = {
    "learning_rate": 0.03,
    "max_iter": 200,
    "max_depth": 3,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
}
#: Weights of the two estimates in the rank blend.
BLEND: dict[str, float] = {"linear": 0.5, "trees": 0.5}
CLIP = 4.0
N_QUANTILES = 101
DEFAULT_PRO_SHARE = 0.3

#: Hand-set weights, in standard deviations of the learned score's logit per
#: unit of the raw feature value; :func:`train` converts them to logit units
#: with the spread it measures, so they keep the same relative size whatever
#: the model.  Two kinds:
#: * request traits the single-turn development data never shows, so cannot be
#:   learned: kept small, so that agent clients that always send tools or long
#:   histories are not all sent to Pro;
#: * domain priors for the chat track (no dev data): longer queries and
#:   explicit reasoning requests lean to Pro, chit-chat / creative requests to
#:   Flash.  Checked not to hurt the cross-validated APGR.
PRIOR: dict[str, float] = {
    "n_user_turns": 0.25,  # log1p(user turns - 1)
    "n_assistant_turns": 0.25,  # log1p(assistant turns)
    "n_tool_turns": 0.0,  # tool-result continuations are execution steps
    "log_tools": 0.25,  # log1p(tools offered): 20 tools -> +0.75 SD
    "thinking": 0.5,  # thinking explicitly enabled
    "effort": 1.0,  # -1 (minimal) .. +1 (max/xhigh); unset or medium = 0
    "log_query_words": 0.5,
    "reason_task": 0.5,
    "chat_task": -0.5,
}


@dataclass(frozen=True)
class Item:
    source: str
    messages: list[dict[str, Any]]
    strong: float
    weak: float

    def route_input(self) -> RouteInput:
        return route_input_from_openai_messages(self.messages)

    def user_text(self) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.messages if m.get("role") == "user")


class DataMissing(RuntimeError):
    pass


def load_items(data_dir: Path) -> list[Item]:
    """All items of ``data_dir/*.jsonl``, files in name order, lines in order."""
    if not data_dir.is_dir():
        raise DataMissing(f"router data directory not found: {data_dir} (pass --data DIR)")
    files = sorted(data_dir.glob("*.jsonl"))
    if not files:
        raise DataMissing(f"no *.jsonl files in router data directory {data_dir}")
    items: list[Item] = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                items.append(
                    Item(
                        source=str(row.get("source") or path.stem),
                        messages=row["messages"],
                        strong=float(row["strong_score"]),
                        weak=float(row["weak_score"]),
                    )
                )
    return items


def data_fingerprint(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(data_dir.glob("*.jsonl"))}


def fold_of(item: Item, k: int, seed: int = 0) -> int:
    """Deterministic fold from the whitespace-normalised user text (identical
    prompts share a fold, like the held-out split)."""
    text = " ".join(item.user_text().split())
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % k


def feature_matrix(items: Sequence[Item]) -> np.ndarray:
    import numpy as np

    return np.array([extract(it.route_input()) for it in items], dtype=float)


def source_weights(sources: Sequence[str]) -> np.ndarray:
    """Sample weights giving every source the same total weight (mean 1)."""
    import numpy as np

    src = np.asarray(sources)
    w = np.zeros(len(src))
    names = sorted(set(src.tolist()))
    for s in names:
        m = src == s
        w[m] = len(src) / (len(names) * m.sum())
    return w


def _r(v: float, nd: int = 6) -> float:
    return float(f"{float(v):.{nd}g}")


def centred_gain(strong: Iterable[float], weak: Iterable[float], sources: Sequence[str]) -> np.ndarray:
    """``strong - weak`` minus its mean within each source: what the router
    ranks by (APGR only compares items of the same source)."""
    import numpy as np

    gain = np.asarray(list(strong), dtype=float) - np.asarray(list(weak), dtype=float)
    src = np.asarray(sources)
    for s in set(src.tolist()):
        m = src == s
        gain[m] -= gain[m].mean()
    return gain


def _export_tree(nodes: Any) -> list[list[float]]:
    out: list[list[float]] = []
    for node in nodes:
        if node["is_leaf"]:
            out.append([_r(node["value"], 8)])
        else:
            if node["is_categorical"]:
                raise ValueError("categorical splits are not supported")
            out.append(
                [
                    int(node["feature_idx"]),
                    float(node["num_threshold"]),  # exact: data values can sit on a threshold
                    int(node["missing_go_to_left"]),
                    int(node["left"]),
                    int(node["right"]),
                ]
            )
    return out


def fit_weights(
    x: np.ndarray,
    strong: Iterable[float],
    weak: Iterable[float],
    sources: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Fit the ridge and the tree ensemble on the within-source centred gain;
    returns a weights dict for ``RouterScorer`` (the blend's rank tables and
    the priors are filled in by :func:`train`)."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    y = centred_gain(strong, weak, sources)
    sw = source_weights(sources)
    x = np.array(x, dtype=float)
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    learned = [j for j in range(x.shape[1]) if scale[j] > 1e-9]
    mean, scale = mean[learned], scale[learned]
    raw = x[:, learned]
    z = (raw - mean) / scale
    z = np.where(np.isnan(z), 0.0, np.clip(z, -CLIP, CLIP))
    ridge = Ridge(alpha=alpha).fit(z, y, sample_weight=sw)
    trees = HistGradientBoostingRegressor(**TREES, early_stopping=False, random_state=0)
    trees.fit(raw, y, sample_weight=sw)
    return {
        "format": FORMAT,
        "model": "rank blend of a ridge and gradient-boosted trees, both estimating E[strong - weak | request]",
        "features": [FEATURES[j] for j in learned],
        "mean": [_r(v) for v in mean],
        "scale": [_r(v) for v in scale],
        "clip": CLIP,
        "linear": {"coef": [_r(v) for v in ridge.coef_], "intercept": _r(ridge.intercept_)},
        "trees": {
            "baseline": _r(float(np.ravel(trees._baseline_prediction)[0]), 9),
            "nodes": [_export_tree(p[0].nodes) for p in trees._predictors],
        },
        "blend": {name: {"weight": w, "cdf": [0.0, 1.0]} for name, w in BLEND.items()},
        "prior": {},
        "default_pro_share": DEFAULT_PRO_SHARE,
    }


def weighted_quantiles(values: Sequence[float], weights: Sequence[float], n: int = N_QUANTILES) -> list[float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w) - 0.5 * w
    cum /= w.sum()
    qs = np.interp(np.linspace(0.0, 1.0, n), cum, v)
    qs = np.maximum.accumulate(qs)
    return [_r(q, 7) for q in qs]


def add_quantiles(weights: dict[str, Any], scores: Sequence[float], sources: Sequence[str]) -> dict[str, Any]:
    """Store the source-balanced distribution of ``scores`` as quantiles."""
    weights["score_quantiles"] = weighted_quantiles(scores, source_weights(sources))
    return weights


def _weighted_sd(values: np.ndarray, weights: np.ndarray) -> float:
    import numpy as np

    mu = np.average(values, weights=weights)
    return float(np.sqrt(np.average((values - mu) ** 2, weights=weights)))


def train(items: Sequence[Item], alpha: float = DEFAULT_ALPHA, x: np.ndarray | None = None) -> dict[str, Any]:
    """Weights trained on ``items`` (features recomputed unless ``x`` given):
    the two estimates, their rank tables, the priors scaled to the spread of
    the blended score, and the reference score distribution, all computed by
    the real scorer."""
    import numpy as np

    from stepplan.routing.scorer import RouterScorer

    if x is None:
        x = feature_matrix(items)
    sources = [it.source for it in items]
    sw = source_weights(sources)
    weights = fit_weights(x, [it.strong for it in items], [it.weak for it in items], sources, alpha)
    rows = x.tolist()
    scorer = RouterScorer(weights)
    for name, estimate in (("linear", scorer.linear), ("trees", scorer.trees)):
        weights["blend"][name]["cdf"] = weighted_quantiles([estimate(r) for r in rows], sw)
    scorer = RouterScorer(weights)
    blended = np.clip([scorer.blend(r) for r in rows], 1e-4, 1 - 1e-4)
    spread = _weighted_sd(np.log(blended / (1 - blended)), sw)
    weights["prior"] = {name: _r(w * spread) for name, w in PRIOR.items()}
    weights["prior_unit"] = _r(spread)
    prior_only = RouterScorer({**weights, "prior_offset": 0.0})
    weights["prior_offset"] = _r(float(np.average([prior_only.prior(r) for r in rows], weights=sw)))
    scorer = RouterScorer({**weights, "score_quantiles": [0.0, 1.0]})
    scores = [scorer.score_features(r) for r in rows]
    return add_quantiles(weights, scores, sources)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dev data dir (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (default: %(default)s)")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="ridge L2 strength (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        items = load_items(args.data)
    except DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = train(items, args.alpha)
    counts: dict[str, int] = {}
    for it in items:
        counts[it.source] = counts.get(it.source, 0) + 1
    weights["training"] = {
        "ridge_alpha": args.alpha,
        "trees": TREES,
        "blend": BLEND,
        "items": counts,
        "data_sha256_16": data_fingerprint(args.data),
        "sample_weighting": "each source equal",
        "quantiles": "source-balanced in-sample scores of the training items",
    }
    args.out.write_text(json.dumps(weights, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(weights['features'])} learned features, "
        f"{len(items)} items)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

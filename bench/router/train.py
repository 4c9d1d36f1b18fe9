"""Train the ``step-router-v1`` scorer and write ``stepplan/routing/weights.json``.

    .venv/bin/python bench/router/train.py [--data DIR] [--out FILE] [--C 0.03]

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
from stepplan.routing.policy import RouteInput, route_input_from_openai_messages  # noqa: E402
from stepplan.routing.scorer import FORMAT, WEIGHTS_PATH  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

DEFAULT_DATA = ROOT.parent / "shared" / "router-data-dev"
SOURCES = ("mmlu", "gsm8k", "arc", "mbpp", "winogrande")
DEFAULT_C = 0.03
CLIP = 4.0
N_QUANTILES = 101
DEFAULT_PRO_SHARE = 0.3

#: Hand-set weights (logit units, times the raw feature value), added to the
#: learned score; see docs/router.md.  Two kinds:
#: * request traits the single-turn development data never shows, so cannot be
#:   learned: kept small, so that agent clients that always send tools or long
#:   histories are not all sent to Pro (the spread of learned logits on the dev
#:   data has a standard deviation of about 0.2);
#: * domain priors for the chat track (no dev data): longer queries and
#:   explicit reasoning requests lean to Pro, chit-chat / creative requests to
#:   Flash.  Checked not to hurt the cross-validated APGR.
PRIOR: dict[str, float] = {
    "n_user_turns": 0.05,  # log1p(user turns - 1)
    "n_assistant_turns": 0.05,  # log1p(assistant turns)
    "n_tool_turns": 0.0,  # tool-result continuations are execution steps
    "log_tools": 0.05,  # log1p(tools offered): 20 tools -> +0.15
    "thinking": 0.10,  # thinking explicitly enabled
    "effort": 0.20,  # -1 (minimal) .. +1 (max/xhigh); unset or medium = 0
    "log_query_words": 0.10,
    "reason_task": 0.10,
    "chat_task": -0.10,
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


def fit_weights(
    x: np.ndarray,
    strong: Iterable[float],
    weak: Iterable[float],
    sources: Sequence[str],
    c: float = DEFAULT_C,
) -> dict[str, Any]:
    """Fit the two logistic heads; returns a weights dict for ``RouterScorer``
    (without ``score_quantiles``; see :func:`add_quantiles`)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    ys = np.asarray(list(strong), dtype=float) >= 0.5
    yw = np.asarray(list(weak), dtype=float) >= 0.5
    sw = source_weights(sources)
    x = np.array(x, dtype=float)
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    learned = [j for j in range(x.shape[1]) if scale[j] > 1e-9]
    mean, scale = mean[learned], scale[learned]
    z = (x[:, learned] - mean) / scale
    z = np.where(np.isnan(z), 0.0, np.clip(z, -CLIP, CLIP))
    heads = {}
    for name, y in (("strong", ys), ("weak", yw)):
        model = LogisticRegression(C=c, max_iter=5000, tol=1e-8)
        model.fit(z, y.astype(int), sample_weight=sw)
        heads[name] = {
            "coef": [_r(v) for v in model.coef_[0]],
            "intercept": _r(model.intercept_[0]),
        }
    return {
        "format": FORMAT,
        "model": "two-head logistic: score = (1 + P(strong right) - P(weak right)) / 2",
        "features": [FEATURES[j] for j in learned],
        "mean": [_r(v) for v in mean],
        "scale": [_r(v) for v in scale],
        "clip": CLIP,
        "strong": heads["strong"],
        "weak": heads["weak"],
        "prior": dict(PRIOR),
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


def train(items: Sequence[Item], c: float = DEFAULT_C, x: np.ndarray | None = None) -> dict[str, Any]:
    """Weights trained on ``items`` (features recomputed unless ``x`` given),
    with the reference score distribution computed by the real scorer."""
    from stepplan.routing.scorer import RouterScorer

    if x is None:
        x = feature_matrix(items)
    sources = [it.source for it in items]
    weights = fit_weights(x, [it.strong for it in items], [it.weak for it in items], sources, c)
    scorer = RouterScorer({**weights, "score_quantiles": [0.0, 1.0]})
    scores = [scorer.score_features(row) for row in x.tolist()]
    return add_quantiles(weights, scores, sources)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dev data dir (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (default: %(default)s)")
    ap.add_argument("--C", type=float, default=DEFAULT_C, dest="c", help="inverse L2 strength (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        items = load_items(args.data)
    except DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = train(items, args.c)
    counts: dict[str, int] = {}
    for it in items:
        counts[it.source] = counts.get(it.source, 0) + 1
    weights["training"] = {
        "C": args.c,
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

"""Offline evaluation of the ``step-router-v1`` scorer.

    .venv/bin/python bench/router/evaluate.py [--data DIR] [--folds 5] [--boot 1000] [--json OUT]

For each of K folds (split by a hash of the user text, so identical prompts
share a fold), trains fresh weights on the other K-1 folds with
``bench/router/train.py`` and scores the held-out fold with the server's own
``RouterScorer``; then reports, per source and macro-averaged over sources:
APGR, CPT(50%), CPT(80%), PGR@20%, PGR@30%, with bootstrap 95% intervals,
against the random (0.5) and prompt-length references.  Also a
leave-one-source-out check (train on four sources, test on the fifth), the
shipped weights' in-sample numbers, and ``RouterPolicy.decide`` latency on
real inputs.

Metric definitions follow the data README: sort by score (highest first),
evaluate PGR at the boundary of each group of tied scores, join the points
with straight lines, integrate with the trapezoid rule.  The metric functions
are pure Python (the tests use them without numpy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# ----------------------------------------------------------------------------- metrics (pure Python)

Curve = list[tuple[float, float]]


def pgr_curve(scores: Sequence[float], strong: Sequence[float], weak: Sequence[float]) -> Curve:
    """Points ``(pro_share, PGR)`` at every tie-group boundary, from (0, 0) to (1, 1).

    Raises ``ValueError`` when the strong and weak means are equal (PGR undefined).
    """
    n = len(scores)
    if n == 0 or len(strong) != n or len(weak) != n:
        raise ValueError("scores, strong and weak must be non-empty and of equal length")
    gap = (sum(strong) - sum(weak)) / n
    if abs(gap) < 1e-12:
        raise ValueError("strong and weak means are equal: PGR is undefined")
    order = sorted(range(n), key=lambda i: -scores[i])
    points: Curve = [(0.0, 0.0)]
    cum = 0.0
    i = 0
    while i < n:
        j = i
        s = scores[order[i]]
        while j < n and scores[order[j]] == s:
            cum += strong[order[j]] - weak[order[j]]
            j += 1
        points.append((j / n, cum / n / gap))
        i = j
    return points


def apgr_from_curve(curve: Curve) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2.0 for (x0, y0), (x1, y1) in itertools.pairwise(curve))


def pgr_at(curve: Curve, share: float) -> float:
    """PGR at Pro share ``share`` (linear interpolation)."""
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x0 <= share <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (share - x0) / (x1 - x0)
    return curve[-1][1]


def cpt(curve: Curve, target: float) -> float:
    """Smallest Pro share at which PGR reaches ``target`` (e.g. 0.5 for CPT(50%))."""
    if curve[0][1] >= target:
        return curve[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y1 >= target > y0:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return 1.0


def apgr(scores: Sequence[float], strong: Sequence[float], weak: Sequence[float]) -> float:
    return apgr_from_curve(pgr_curve(scores, strong, weak))


METRICS: dict[str, Callable[[Curve], float]] = {
    "APGR": apgr_from_curve,
    "CPT50": lambda c: cpt(c, 0.5),
    "CPT80": lambda c: cpt(c, 0.8),
    "PGR@20": lambda c: pgr_at(c, 0.2),
    "PGR@30": lambda c: pgr_at(c, 0.3),
}


def all_metrics(scores: Sequence[float], strong: Sequence[float], weak: Sequence[float]) -> dict[str, float]:
    curve = pgr_curve(scores, strong, weak)
    return {name: fn(curve) for name, fn in METRICS.items()}


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Scored:
    """Scores of one router for every item (aligned with the item list)."""

    name: str
    scores: list[float]


def by_source(items: Sequence[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it.source, []).append(i)
    return dict(sorted(out.items(), key=lambda kv: _source_rank(kv[0])))


def _source_rank(s: str) -> tuple[int, str]:
    from train import SOURCES

    return (SOURCES.index(s) if s in SOURCES else len(SOURCES), s)


def evaluate_router(items: Sequence[Any], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per-source metrics plus ``macro`` (unweighted mean over sources)."""
    res: dict[str, dict[str, float]] = {}
    for src, idx in by_source(items).items():
        res[src] = all_metrics([scores[i] for i in idx], [items[i].strong for i in idx], [items[i].weak for i in idx])
    res["macro"] = {m: statistics.fmean(r[m] for r in res.values()) for m in METRICS}
    return res


def bootstrap(
    items: Sequence[Any], routers: Sequence[Scored], n_boot: int, seed: int = 0
) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """95% percentile intervals per router, source and metric (items resampled
    within each source; the same resamples for every router), plus the paired
    interval of each router's macro APGR minus the first router's."""
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = by_source(items)
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        r.name: {s: {m: [] for m in METRICS} for s in [*groups, "macro"]} for r in routers
    }
    diffs: dict[str, list[float]] = {r.name: [] for r in routers}
    arrays = {
        src: (
            np.array([items[i].strong for i in idx]),
            np.array([items[i].weak for i in idx]),
            {r.name: np.array([r.scores[i] for i in idx]) for r in routers},
        )
        for src, idx in groups.items()
    }
    for _ in range(n_boot):
        draws = {src: rng.integers(0, len(idx), len(idx)) for src, idx in groups.items()}
        for r in routers:
            per = []
            for src in groups:
                s, w, sc = arrays[src]
                d = draws[src]
                try:
                    m = all_metrics(sc[r.name][d].tolist(), s[d].tolist(), w[d].tolist())
                except ValueError:
                    continue
                per.append(m)
                for k, v in m.items():
                    samples[r.name][src][k].append(v)
            if len(per) == len(groups):
                for k in METRICS:
                    samples[r.name]["macro"][k].append(statistics.fmean(p[k] for p in per))
                first = samples[routers[0].name]["macro"]["APGR"][-1]
                diffs[r.name].append(samples[r.name]["macro"]["APGR"][-1] - first)

    def ci(v: list[float]) -> tuple[float, float]:
        if not v:
            return (math.nan, math.nan)
        lo, hi = np.percentile(v, [2.5, 97.5])
        return (float(lo), float(hi))

    out = {r.name: {s: {m: ci(v) for m, v in per.items()} for s, per in samples[r.name].items()} for r in routers}
    for r in routers:
        out[r.name]["macro"]["APGR-diff-vs-first"] = ci(diffs[r.name])
    return out


def length_scores(items: Sequence[Any]) -> list[float]:
    return [float(len(it.user_text())) for it in items]


def cross_validated_scores(items: Sequence[Any], x: Any, folds: int, alpha: float, seed: int = 0) -> list[float]:
    """Held-out scores: for each fold, train on the rest, score the fold with
    ``RouterScorer.score`` on the request itself (the server's code path)."""
    from train import fold_of, train

    from stepplan.routing.scorer import RouterScorer

    fold = [fold_of(it, folds, seed) for it in items]
    scores = [math.nan] * len(items)
    for k in range(folds):
        tr = [i for i in range(len(items)) if fold[i] != k]
        te = [i for i in range(len(items)) if fold[i] == k]
        scorer = RouterScorer(train([items[i] for i in tr], alpha, x[tr]))
        for i in te:
            scores[i] = scorer.score(items[i].route_input())
    return scores


def leave_one_source_out(items: Sequence[Any], x: Any, alpha: float) -> dict[str, dict[str, float]]:
    from train import train

    from stepplan.routing.scorer import RouterScorer

    out: dict[str, dict[str, float]] = {}
    groups = by_source(items)
    for src, idx in groups.items():
        held = set(idx)
        tr = [i for i in range(len(items)) if i not in held]
        scorer = RouterScorer(train([items[i] for i in tr], alpha, x[tr]))
        sc = [scorer.score(items[i].route_input()) for i in idx]
        out[src] = all_metrics(sc, [items[i].strong for i in idx], [items[i].weak for i in idx])
    out["macro"] = {m: statistics.fmean(r[m] for r in out.values()) for m in METRICS}
    return out


def synthetic_requests() -> list[Any]:
    """Request shapes the dev data lacks, for latency: long agent contexts, tools."""
    from stepplan.routing.types import RouteInput

    long_ctx = ("def handler(event):\n    return process(event)  # " + "x" * 60 + "\n") * 4000
    agent_turns = [(r, "step output " * 200) for _ in range(60) for r in ("user", "assistant", "tool")]
    return [
        RouteInput(turns=[("user", "hi")]),
        RouteInput(
            turns=[("system", "You are a coding agent. " * 400), ("user", "Fix the failing test:\n" + long_ctx)],
            n_tools=24,
            effort="high",
            thinking=True,
        ),
        RouteInput(
            turns=[("system", "agent"), *agent_turns],
            n_tools=12,
        ),
        RouteInput(turns=[("user", "请详细证明费马小定理，并用Python实现快速幂。" * 300)]),
    ]


def latency(items: Sequence[Any], repeats: int = 5) -> dict[str, float]:
    """Wall time of ``RouterPolicy.decide`` in microseconds, on every dev item
    plus synthetic long-context / agent / CJK requests.

    ``wall_*``: every call as measured (includes scheduler noise and GC on a
    shared machine).  ``cost_*``: per input, the median of ``repeats`` calls --
    the decision cost of that request without the noise.
    """
    from stepplan.routing.policy import RouterPolicy
    from stepplan.routing.scorer import RouterScorer

    t0 = time.perf_counter()
    scorer = RouterScorer()
    load_ms = (time.perf_counter() - t0) * 1e3
    policy = RouterPolicy.for_pro_share(scorer, scorer.default_pro_share)
    synthetic = synthetic_requests()
    inputs = [it.route_input() for it in items] + synthetic
    for inp in inputs[:200]:  # warm-up
        policy.decide(inp)
    wall: list[float] = []
    cost: list[float] = []
    for inp in inputs:
        per: list[float] = []
        for _ in range(repeats):
            t = time.perf_counter_ns()
            policy.decide(inp)
            per.append((time.perf_counter_ns() - t) / 1e3)
        wall.extend(per)
        cost.append(statistics.median(per))
    wall.sort()
    syn_cost = cost[len(items) :]
    cost.sort()

    def q(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    return {
        "inputs": float(len(inputs)),
        "calls": float(len(wall)),
        "wall_p50_us": q(wall, 0.5),
        "wall_p99_us": q(wall, 0.99),
        "wall_max_us": wall[-1],
        "cost_p50_us": q(cost, 0.5),
        "cost_p99_us": q(cost, 0.99),
        "cost_max_us": cost[-1],
        "synthetic_max_us": max(syn_cost),
        "weights_load_ms": load_ms,
    }


# ----------------------------------------------------------------------------- report


def _fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def print_table(title: str, results: dict[str, dict[str, dict[str, float]]], cis: dict[str, Any] | None) -> None:
    print(f"\n## {title}")
    sources = list(next(iter(results.values())).keys())
    print(f"{'router':14s} {'source':11s} " + " ".join(f"{m:>8s}" for m in METRICS) + "   APGR 95% CI")
    for name, res in results.items():
        for src in sources:
            row = res[src]
            ci = _fmt_ci(cis[name][src]["APGR"]) if cis and name in cis else ""
            print(f"{name:14s} {src:11s} " + " ".join(f"{row[m]:8.3f}" for m in METRICS) + f"   {ci}")


def main(argv: Sequence[str] | None = None) -> int:
    from train import DEFAULT_ALPHA, DEFAULT_DATA, DataMissing, feature_matrix, load_items

    ap = argparse.ArgumentParser(description="Cross-validated evaluation of the step-router-v1 scorer.")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dev data dir (default: %(default)s)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment salt of the first repeat")
    ap.add_argument("--repeats", type=int, default=10, help="CV repeats with different fold salts (averaged)")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="ridge L2 strength")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (0 = none)")
    ap.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--json", type=Path, help="also write all numbers here")
    args = ap.parse_args(argv)

    try:
        items = load_items(args.data)
    except DataMissing as exc:
        print(
            f"error: {exc}\nThe router dev data is expected at ../shared/router-data-dev next to the "
            "repository; pass --data DIR.",
            file=sys.stderr,
        )
        return 2

    t0 = time.perf_counter()
    x = feature_matrix(items)
    runs = [
        cross_validated_scores(items, x, args.folds, args.alpha, args.seed + r) for r in range(max(args.repeats, 1))
    ]
    routers = [Scored("length", length_scores(items)), Scored("router-cv", runs[0])]
    results = {r.name: evaluate_router(items, r.scores) for r in routers}
    per_run = [evaluate_router(items, sc) for sc in runs]
    results["router-cv"] = {
        src: {m: statistics.fmean(run[src][m] for run in per_run) for m in METRICS} for src in per_run[0]
    }
    results = {
        "random": {
            s: {"APGR": 0.5, "CPT50": 0.5, "CPT80": 0.8, "PGR@20": 0.2, "PGR@30": 0.3} for s in results["length"]
        },
        **results,
    }
    cis = bootstrap(items, routers, args.boot) if args.boot > 0 else None
    report: dict[str, Any] = {"folds": args.folds, "alpha": args.alpha, "items": len(items), "cv": results}
    report["cv_macro_apgr_per_repeat"] = [run["macro"]["APGR"] for run in per_run]
    print(
        f"# step-router-v1 scorer: {len(items)} items, {args.folds}-fold CV x {len(runs)} repeats (alpha={args.alpha})"
    )
    print_table(
        f"{args.folds}-fold cross-validation, held-out scores from the server scorer, mean of "
        f"{len(runs)} repeats (CIs: first repeat)",
        results,
        cis,
    )
    print("router-cv macro APGR per repeat: " + ", ".join(f"{v:.3f}" for v in report["cv_macro_apgr_per_repeat"]))
    if cis:
        report["bootstrap_ci95"] = cis
        d = cis["router-cv"]["macro"]["APGR-diff-vs-first"]
        mean_delta = results["router-cv"]["macro"]["APGR"] - results["length"]["macro"]["APGR"]
        first_delta = per_run[0]["macro"]["APGR"] - results["length"]["macro"]["APGR"]
        report["macro_apgr_minus_length"] = {
            "mean_of_repeats": mean_delta,
            "first_repeat": first_delta,
            "first_repeat_ci95": d,
        }
        print(
            f"\nmacro APGR router-cv minus length: {mean_delta:+.3f} (mean of repeats); first repeat "
            f"{first_delta:+.3f}, paired bootstrap 95% CI {_fmt_ci(d)} ({args.boot} resamples)"
        )
    if not args.no_loso:
        loso = leave_one_source_out(items, x, args.alpha)
        report["leave_one_source_out"] = loso
        print_table("leave-one-source-out (train on the other sources)", {"router-loso": loso}, None)
    from stepplan.routing.scorer import RouterScorer

    shipped = RouterScorer()
    report["shipped_in_sample"] = evaluate_router(items, [shipped.score(it.route_input()) for it in items])
    print_table("shipped weights, in-sample (optimistic)", {"shipped": report["shipped_in_sample"]}, None)
    if not args.no_latency:
        lat = latency(items)
        report["latency"] = lat
        print(f"\n## RouterPolicy.decide latency, {int(lat['inputs'])} inputs x 5 calls (us)")
        print(
            f"decision cost (median per input): p50 {lat['cost_p50_us']:.0f}, p99 {lat['cost_p99_us']:.0f}, "
            f"max {lat['cost_max_us']:.0f}; synthetic long-context/agent/CJK max {lat['synthetic_max_us']:.0f}"
        )
        print(
            f"raw wall time (all calls): p50 {lat['wall_p50_us']:.0f}, p99 {lat['wall_p99_us']:.0f}, "
            f"max {lat['wall_max_us']:.0f}; weights load {lat['weights_load_ms']:.1f} ms"
        )
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

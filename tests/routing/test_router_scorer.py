"""step-router-v1 scoring brain: features, scorer, policy, thresholds and the APGR metric.

The metric tests use hand-made cases; the data-dependent test runs only when the
development data sits at ../shared/router-data-dev next to the repository.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from stepplan.routing.features import FEATURES, extract, split_query
from stepplan.routing.policy import (
    FLASH_ENGINE,
    RouteDecision,
    RouteInput,
    RouterPolicy,
    route_input_from_openai_messages,
    threshold_for_pro_share,
)
from stepplan.routing.scorer import FORMAT, WEIGHTS_PATH, RouterScorer, cdf, default_scorer
from stepplan.settings import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "router-data-dev"

HARD = (
    "A warehouse ships 3 kinds of boxes. Small boxes hold 12 items, medium 30 and large 75. "
    "On Monday it shipped 14 small, 9 medium and 4 large boxes; on Tuesday twice as many small boxes, "
    "a third fewer medium boxes and 7 large ones. Calculate step by step how many items were shipped in "
    "total, then write a Python function `items_shipped(counts: dict[str, int]) -> int` that computes it "
    "for any day, explain why your function is correct, and derive its time complexity."
)
EASY = "hi"


def _load(name: str) -> ModuleType:
    path = ROOT / "bench" / "router" / f"{name}.py"
    bench_dir = str(path.parent)
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    spec = importlib.util.spec_from_file_location(f"_router_bench_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ev() -> ModuleType:
    return _load("evaluate")


def _inp(text: str, **kw: object) -> RouteInput:
    return RouteInput(turns=[("user", text)], **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- scorer


def test_shipped_weights_are_small_and_consistent() -> None:
    assert WEIGHTS_PATH.stat().st_size < 300_000
    w = json.loads(WEIGHTS_PATH.read_text())
    assert set(w["features"]) <= set(FEATURES)
    assert set(w["prior"]) <= set(FEATURES)
    q = w["score_quantiles"]
    assert len(q) >= 11 and all(a <= b for a, b in itertools.pairwise(q))
    assert q[0] >= 0.0 and q[-1] <= 1.0


@pytest.mark.parametrize(
    "inp",
    [
        _inp(""),
        _inp(EASY),
        _inp(HARD),
        _inp("x" * 200_000),
        _inp("9" * 5000 + " / 0 = ?"),
        _inp("写一首关于春天的诗，然后证明费马小定理。" * 50),
        RouteInput(turns=[]),
        RouteInput(turns=[("system", "be brief")]),
        RouteInput(turns=[("tool", "{}"), ("assistant", "")], n_tools=500, effort="max", thinking=True),
        RouteInput(turns=[("user", "hello")], effort="minimal", thinking=False, input_tokens=10**9),
        RouteInput(turns=[("user", "a\n\nAnswer: b\n\nc\n\nAnswer: d\n\nq")]),
    ],
)
def test_score_in_unit_interval(inp: RouteInput) -> None:
    s = default_scorer().score(inp)
    assert isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0
    assert len(extract(inp)) == len(FEATURES)


def _hand_weights(**over: object) -> dict[str, object]:
    """A two-feature model: ridge on ``log_query_chars`` only, one tree on ``digit_frac``
    (NaN goes right) and ``log_query_chars``."""
    w: dict[str, object] = {
        "format": FORMAT,
        "features": ["log_query_chars", "digit_frac"],
        "mean": [3.0, 0.1],
        "scale": [1.0, 0.1],
        "clip": 2.0,
        "linear": {"coef": [0.5, 0.0], "intercept": 0.0},
        "trees": {
            "baseline": 0.0,
            # root: digit_frac <= 0.2 (NaN right); left: log_query_chars <= 3.0
            "nodes": [[[1, 0.2, 0, 1, 4], [0, 3.0, 1, 2, 3], [-1.0], [1.0], [5.0]]],
        },
        "blend": {
            "linear": {"weight": 1.0, "cdf": [-1.0, 0.0, 1.0]},
            "trees": {"weight": 1.0, "cdf": [-1.0, 1.0, 5.0]},
        },
        "prior": {},
        "score_quantiles": [0.0, 1.0],
    }
    w.update(over)
    return w


def _x(**vals: float) -> list[float]:
    x = [0.0] * len(FEATURES)
    for name, v in vals.items():
        x[FEATURES.index(name)] = v
    return x


def _walk_trees(s: RouterScorer, x: list[float]) -> float:
    """The trees' sum by walking the node tuples: the definition the compiled code must match."""
    total = s._baseline
    for node in s._trees:
        while isinstance(node, tuple):
            v = x[node[0]]
            if v <= node[1]:
                node = node[3]
            elif v != v:  # NaN: the branch learned for missing values
                node = node[3] if node[2] else node[4]
            else:
                node = node[4]
        total += node
    return total


def test_tree_and_linear_evaluation() -> None:
    s = RouterScorer(_hand_weights())
    nan = float("nan")
    # a value equal to the threshold goes left; NaN follows the stored branch
    assert s.trees(_x(log_query_chars=3.0, digit_frac=0.2)) == -1.0
    assert s.trees(_x(log_query_chars=3.5, digit_frac=0.0)) == 1.0
    assert s.trees(_x(log_query_chars=3.5, digit_frac=0.9)) == 5.0
    assert s.trees(_x(log_query_chars=3.5, digit_frac=nan)) == 5.0
    assert s.trees(_x(log_query_chars=nan, digit_frac=0.0)) == -1.0
    for x in (_x(log_query_chars=3.0, digit_frac=nan), _x(log_query_chars=nan, digit_frac=nan)):
        assert s.trees(x) == _walk_trees(s, x)
    # ridge: standardised, clipped at 2 SD, NaN counts as average
    assert s.linear(_x(log_query_chars=4.0)) == pytest.approx(0.5)
    assert s.linear(_x(log_query_chars=100.0)) == pytest.approx(1.0)
    assert s.linear(_x(log_query_chars=nan)) == 0.0
    # blend: mean of the two ranks
    assert s.blend(_x(log_query_chars=4.0, digit_frac=0.9)) == pytest.approx((0.75 + 1.0) / 2)
    assert s.blend(_x(log_query_chars=2.0, digit_frac=0.0)) == pytest.approx((0.25 + 0.0) / 2)


def test_compiled_trees_match_the_node_walk() -> None:
    s = default_scorer()
    rng = random.Random(3)
    texts = [EASY, HARD, "What is 17% of 240 dollars per hour?", "def f(x):\n    return x\nassert f(1) == 1"]
    rows = [extract(_inp(t)) for t in texts]
    for _ in range(300):  # random vectors around real ones, some values undefined
        base = list(rng.choice(rows))
        for j in range(len(base)):
            r = rng.random()
            if r < 0.1:
                base[j] = float("nan")
            elif r < 0.5:
                base[j] = base[j] * rng.uniform(0.0, 3.0) + rng.uniform(-1.0, 1.0)
        rows.append(base)
    for x in rows:
        assert s.trees(x) == pytest.approx(_walk_trees(s, x), abs=1e-12)


def test_split_on_missing_values_only() -> None:
    # scikit-learn writes threshold +inf for a split that only separates undefined values
    w = _hand_weights(trees={"baseline": 0.5, "nodes": [[[1, float("inf"), 0, 1, 2], [1.0], [-1.0]]]})
    s = RouterScorer(w)
    assert s.trees(_x(digit_frac=1e300)) == _walk_trees(s, _x(digit_frac=1e300)) == 1.5
    assert s.trees(_x(digit_frac=float("nan"))) == _walk_trees(s, _x(digit_frac=float("nan"))) == -0.5


def test_cdf_interpolates_and_handles_ties() -> None:
    q = [0.0, 1.0, 1.0, 1.0, 2.0]
    assert cdf(-5.0, q) == 0.0 and cdf(9.0, q) == 1.0
    assert cdf(0.5, q) == pytest.approx(0.125)
    assert cdf(1.0, q) == pytest.approx(0.5)  # middle of the tied run
    assert cdf(1.5, q) == pytest.approx(0.875)
    assert cdf(0.3, [0.3]) == 0.5


@pytest.mark.parametrize(
    "over",
    [
        {"format": "stepplan-router/1"},
        {"features": ["no_such_feature", "digit_frac"]},
        {"mean": [0.0]},
        {"trees": {"baseline": 0.0, "nodes": [[[1, 0.2, 0, 1, 9], [1.0]]]}},
        {"trees": {"baseline": 0.0, "nodes": [[[1, 0.2, 0]]]}},
        {"trees": {"baseline": 0.0, "nodes": [[[1, float("nan"), 0, 1, 2], [1.0], [2.0]]]}},
        {"trees": {"baseline": 0.0, "nodes": [[[1, 0.2, 0, 1, 2], [float("inf")], [2.0]]]}},
        {"trees": {"baseline": 0.0, "nodes": [[[1, 0.2, 0, 1, 0], [1.0]]]}},  # a cycle
        {"blend": {"linear": {"weight": 0, "cdf": [0, 1]}, "trees": {"weight": 0, "cdf": [0, 1]}}},
    ],
)
def test_bad_weights_are_refused(over: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RouterScorer(_hand_weights(**over))


def test_deterministic_across_instances() -> None:
    a, b = RouterScorer(), RouterScorer(WEIGHTS_PATH)
    for text in (EASY, HARD, "What is 2+2?"):
        assert a.score(_inp(text)) == b.score(_inp(text)) == a.score(_inp(text))


def test_monotonic_sanity() -> None:
    s = default_scorer()
    assert s.score(_inp(HARD)) > s.score(_inp(EASY))
    code = "Implement a thread-safe LRU cache in C++ with O(1) get and put, and explain the locking strategy."
    assert s.score(_inp(code)) > s.score(_inp("Tell me a joke"))


def test_agent_hints_lean_to_pro() -> None:
    s = default_scorer()
    text = "Refactor the parser module and run the tests."
    plain = s.score(_inp(text))
    assert s.score(_inp(text, effort="high", thinking=True)) > plain
    assert s.score(_inp(text, n_tools=20)) > plain
    assert s.score(_inp(text, effort="low")) < plain


def test_word_problem_and_code_request_cues() -> None:
    def f(text: str) -> dict[str, float]:
        return dict(zip(FEATURES, extract(_inp(text)), strict=True))

    problem = f(
        "Tom earns $12 per hour and works 6 hours each day. After 3 days he spends 25% of it. "
        "How many dollars are left?"
    )
    assert problem["log_units"] > 0 and problem["log_rates"] > 0 and problem["log_steps"] > 0
    assert problem["money"] > 0 and problem["percent"] > 0 and problem["numeric_sentence_share"] > 0.5
    assert problem["write_code"] == 0.0 and problem["code_assert"] == 0.0
    code = f(
        "Write a function to find the maximum sum of a subsequence in a list of integers.\n"
        "assert max_sum([1, 2, 3]) == 6\ndef max_sum(nums):"
    )
    assert code["write_code"] == 1.0 and code["code_assert"] == 1.0 and code["code_signature"] >= 1.0
    assert code["code_data_words"] > 0 and code["code_algo_words"] > 0
    assert f("She told him that they would meet her there.")["pronoun_share"] > 0.4
    # option lines are not part of the stem: numbers in options are not quantities of the question
    mc = f("Which is prime?\nA) 4\nB) 6\nC) 7\nD) 9\nAnswer:")
    assert mc["log_quantities"] == 0.0 and mc["n_options"] == 4.0


def test_split_query_strips_few_shot_examples() -> None:
    shots = "\n\n".join(f"Q{i}?\nA) x\nB) y\nAnswer:\nA" for i in range(4))
    query, n_blocks = split_query(shots + "\n\nWhich one is right?\nA) x\nB) y\nAnswer:")
    assert query.startswith("Which one is right?") and n_blocks == 5
    plain = "First paragraph.\n\nSecond paragraph with the question?"
    assert split_query(plain) == (plain, 2)


def test_route_input_from_openai_messages() -> None:
    messages = [
        {"role": "developer", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:,"}},
                {"type": "text", "text": "here"},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "result", "tool_call_id": "1"},
        {"role": "user", "content": "thanks"},
    ]
    inp = route_input_from_openai_messages(messages, tools=[{"type": "function"}] * 3)
    assert inp.turns == [
        ("system", "sys"),
        ("user", "look\nhere"),
        ("assistant", ""),
        ("tool", "result"),
        ("user", "thanks"),
    ]
    assert inp.n_tools == 3 and inp.effort is None and inp.thinking is None
    assert route_input_from_openai_messages([]).turns == []


# ----------------------------------------------------------------------------- policy and thresholds


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value
        self.score_quantiles = [i / 100 for i in range(101)]

    def score(self, inp: RouteInput) -> float:
        return self.value


def test_policy_decide_and_reason() -> None:
    pro = RouterPolicy(_Fixed(0.71), 0.55).decide(_inp("x"))
    assert pro == RouteDecision("deepseek-v4-pro", 0.71, "score=0.7100>=0.5500")
    flash = RouterPolicy(_Fixed(0.2), 0.55).decide(_inp("x"))
    assert flash == RouteDecision("step-3.5-flash", 0.2, "score=0.2000<0.5500")  # the Step Plan page's engine
    assert FLASH_ENGINE == RouterConfig().flash_engine == "step-3.5-flash"
    later = RouterPolicy(_Fixed(0.2), 0.55, flash_engine="step-3.7-flash").decide(_inp("x"))  # configurable
    assert later.engine == "step-3.7-flash"
    assert RouterPolicy(_Fixed(0.55), 0.55).decide(_inp("x")).engine == "deepseek-v4-pro"
    with pytest.raises(ValueError):
        RouterPolicy(_Fixed(0.5), float("nan"))


def test_threshold_for_pro_share_on_uniform_quantiles() -> None:
    q = [i / 100 for i in range(101)]
    assert threshold_for_pro_share(0.3, q) == pytest.approx(0.7)
    assert threshold_for_pro_share(0.125, q) == pytest.approx(0.875)
    assert threshold_for_pro_share(1.0, q) == 0.0
    assert threshold_for_pro_share(0.0, q) > 1.0
    with pytest.raises(ValueError):
        threshold_for_pro_share(0.3, [])
    policy = RouterPolicy.for_pro_share(_Fixed(0.5), 0.25)
    assert policy.threshold == pytest.approx(0.75)


def test_threshold_for_pro_share_shipped_distribution() -> None:
    s = default_scorer()
    shares = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]
    ts = [threshold_for_pro_share(x) for x in shares]
    assert all(a >= b for a, b in itertools.pairwise(ts))  # more Pro -> lower threshold
    assert ts[4] == threshold_for_pro_share(0.3, s.score_quantiles) == RouterPolicy.for_pro_share(s, 0.3).threshold
    # On a sample that follows the reference distribution the share is met.
    rng = random.Random(7)
    q = s.score_quantiles
    sample = [threshold_for_pro_share(1.0 - rng.random(), q) for _ in range(4000)]
    for share in (0.1, 0.3, 0.5):
        t = threshold_for_pro_share(share, q)
        got = sum(v >= t for v in sample) / len(sample)
        assert got == pytest.approx(share, abs=0.03)


def test_decide_is_cheap_enough_to_call_inline() -> None:
    # Not a timing test: just exercises decide() on a long agent-style request.
    policy = RouterPolicy.for_pro_share(default_scorer(), 0.3)
    turns = [("system", "tools " * 5000)] + [("user", "step " * 3000), ("assistant", "ok"), ("tool", "{}")] * 50
    d = policy.decide(RouteInput(turns=turns, n_tools=30))
    assert d.engine in ("deepseek-v4-pro", "step-3.5-flash") and 0.0 <= d.score <= 1.0


# ----------------------------------------------------------------------------- metrics


def test_apgr_constant_router_is_half(ev: ModuleType) -> None:
    strong, weak = [1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 1, 0]
    assert ev.apgr([0.3] * 6, strong, weak) == pytest.approx(0.5)
    curve = ev.pgr_curve([0.3] * 6, strong, weak)
    assert curve == [(0.0, 0.0), (1.0, 1.0)]
    assert ev.cpt(curve, 0.5) == pytest.approx(0.5) and ev.cpt(curve, 0.8) == pytest.approx(0.8)
    assert ev.pgr_at(curve, 0.2) == pytest.approx(0.2)


def test_apgr_oracle_and_anti_oracle(ev: ModuleType) -> None:
    strong, weak = [1, 1, 0, 0], [0, 1, 0, 1]  # gains +1, 0, 0, -1; gap = 0
    with pytest.raises(ValueError):
        ev.apgr([1, 2, 3, 4], strong, weak)
    strong, weak = [1, 1, 1, 0], [0, 0, 1, 1]  # gains +1, +1, 0, -1; mean gap 0.25
    oracle = [3.0, 3.0, 2.0, 1.0]
    # Curve: (0,0), (0.5, 2.0), (0.75, 2.0), (1, 1)
    assert ev.pgr_curve(oracle, strong, weak) == [(0.0, 0.0), (0.5, 2.0), (0.75, 2.0), (1.0, 1.0)]
    assert ev.apgr(oracle, strong, weak) == pytest.approx(0.5 * 1.0 + 0.25 * 2.0 + 0.25 * 1.5)
    assert ev.apgr(oracle, strong, weak) > 1.0
    anti = [-v for v in oracle]
    assert ev.apgr(anti, strong, weak) < 0.5
    curve = ev.pgr_curve(oracle, strong, weak)
    assert ev.cpt(curve, 0.5) == pytest.approx(0.125)
    assert ev.pgr_at(curve, 0.2) == pytest.approx(0.8)


def test_apgr_random_router_averages_half(ev: ModuleType) -> None:
    rng = random.Random(1)
    strong = [rng.random() < 0.8 for _ in range(400)]
    weak = [rng.random() < 0.6 for _ in range(400)]
    vals = [ev.apgr([rng.random() for _ in range(400)], strong, weak) for _ in range(200)]
    assert sum(vals) / len(vals) == pytest.approx(0.5, abs=0.02)


def test_ties_equal_expected_random_tie_breaking(ev: ModuleType) -> None:
    strong, weak = [1, 0, 1, 1, 0], [0, 0, 1, 0, 1]
    scores = [1.0, 0.5, 0.5, 0.5, 0.0]
    tied = ev.apgr(scores, strong, weak)
    vals = []
    for perm in itertools.permutations([1, 2, 3]):
        s = list(scores)
        for rank, i in enumerate(perm):
            s[i] = 0.5 + 0.01 * rank
        vals.append(ev.apgr(s, strong, weak))
    assert tied == pytest.approx(sum(vals) / len(vals))


# ----------------------------------------------------------------------------- data-dependent (quick)


@pytest.mark.skipif(not (DATA / "mmlu.jsonl").is_file(), reason="router dev data not present")
def test_shipped_weights_beat_length_on_mmlu(ev: ModuleType) -> None:
    train = _load("train")
    items = [it for it in train.load_items(DATA) if it.source == "mmlu"]
    s = default_scorer()
    strong, weak = [it.strong for it in items], [it.weak for it in items]
    ours = ev.apgr([s.score(it.route_input()) for it in items], strong, weak)
    length = ev.apgr([len(it.user_text()) for it in items], strong, weak)
    assert ours > length > 0.5


def test_evaluate_reports_missing_data(ev: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main(["--data", str(tmp_path / "nope")]) == 2
    assert "router data directory not found" in capsys.readouterr().err


def test_router_preloads_its_policy_only_when_a_model_routes() -> None:
    from stepplan.catalog import Catalog
    from stepplan.routing.route import Router
    from stepplan.settings import RouterConfig

    router = Router(Catalog.build(), RouterConfig(pro_share=0.2))
    router.preload()
    assert router._policy is not None
    assert router._policy.threshold == pytest.approx(threshold_for_pro_share(0.2))
    hidden = Router(Catalog.build({"step-router-v1": {"public": False}}), RouterConfig())
    hidden.preload()
    assert hidden._policy is None

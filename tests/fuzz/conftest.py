"""Fuzzing profiles and the numbers every fuzz run reports (docs/security.md, "Fuzzing").

``STEPPLAN_FUZZ_PROFILE=ci`` (default) keeps the whole fuzz step within about three minutes on two
cores and still tries more than 1,000 cases; ``nightly`` tries more than 10,000. Every generated
case is recorded in :data:`STATS`; the run ends with one line per suite: cases tried, responses
≥ 500 (only the documented upstream 502/503/504 are allowed, and the fake upstream never fails
here, so any is a bug) and the slowest case. ``STEPPLAN_FUZZ_REPORT=path`` also writes them as JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("STEPPLAN_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "nightly"):
    raise RuntimeError(f"STEPPLAN_FUZZ_PROFILE must be 'ci' or 'nightly', not {PROFILE!r}")

# examples per test: (codec property tests, schemathesis per operation of our document, OpenAI spec operation)
EXAMPLES = {"ci": (150, 30, 150), "nightly": (1500, 300, 1500)}[PROFILE]
CODEC_EXAMPLES, OPERATION_EXAMPLES, OPENAI_SPEC_EXAMPLES = EXAMPLES

for name, n in (("stepplan-codecs", CODEC_EXAMPLES), ("stepplan-live", OPERATION_EXAMPLES),
                ("stepplan-openai-spec", OPENAI_SPEC_EXAMPLES)):
    settings.register_profile(name, max_examples=n, deadline=None, derandomize=PROFILE == "ci",
                              database=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                     HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])


@dataclass
class Suite:
    cases: int = 0
    server_errors: list[str] = field(default_factory=list)
    slowest: float = 0.0
    slowest_case: str = ""
    statuses: Counter[int] = field(default_factory=Counter)


STATS: dict[str, Suite] = {}


@contextmanager
def case(suite: str, label: str) -> Iterator[None]:
    """Time one generated case of ``suite`` (``label`` says which, for the slowest-case line)."""
    s = STATS.setdefault(suite, Suite())
    t0 = time.perf_counter()
    try:
        yield
    finally:
        took = time.perf_counter() - t0
        s.cases += 1
        if took > s.slowest:
            s.slowest, s.slowest_case = took, label[:200]


def status(suite: str, code: int) -> None:
    STATS.setdefault(suite, Suite()).statuses[code] += 1


def server_error(suite: str, what: str) -> None:
    STATS.setdefault(suite, Suite()).server_errors.append(what[:500])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS:
        return
    terminalreporter.section(f"fuzzing ({PROFILE} profile)")
    total = sum(s.cases for s in STATS.values())
    for name, s in sorted(STATS.items()):
        terminalreporter.write_line(f"{name}: {s.cases} cases, {len(s.server_errors)} responses >= 500, "
                                    f"slowest {s.slowest * 1000:.0f} ms ({s.slowest_case})")
        if s.statuses:
            terminalreporter.write_line("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(s.statuses.items())))
    terminalreporter.write_line(f"total: {total} cases")
    out = os.environ.get("STEPPLAN_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"profile": PROFILE, "total": total, "suites": {
                n: {"cases": s.cases, "server_errors": s.server_errors, "slowest_ms": round(s.slowest * 1000, 1),
                    "slowest_case": s.slowest_case, "statuses": dict(sorted(s.statuses.items()))}
                for n, s in STATS.items()}}, f, indent=2)

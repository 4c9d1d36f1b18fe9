"""The Grafana dashboard and the docs only use metrics the gateway defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stepplan.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b((?:stepplan|gen_ai)_[a-z_]+)(?=[{[])")  # a metric, not a label


def defined_names() -> set[str]:
    m = Metrics(["step-3.5-flash"], lambda _m: "up", account_labels=True)
    return set(m.registry._names_to_collectors)


def test_dashboard_queries_name_defined_metrics() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "stepplan.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = {n for e in exprs for n in NAME.findall(e)}
    defined = defined_names()
    assert used and not used - defined, sorted(used - defined)
    titles = {p["title"] for p in dash["panels"]}
    assert {"Error rate", "Time to first token p50 / p95 (streams)", "Uncollected Credit (should be 0)"} <= titles


def test_docs_metrics_table_matches_the_code() -> None:
    text = (ROOT / "docs" / "operating.md").read_text()
    table = set(re.findall(r"^\| `((?:stepplan|gen_ai)_[a-z_]+)` \|", text, re.M))
    defined = defined_names()
    families = {n for n in defined if not n.endswith(("_bucket", "_count", "_sum", "_created"))}
    families = {n for n in families if f"{n}_total" not in families}  # a counter is documented as …_total
    required = {n for n in families if "account" not in n}  # the opt-in series are described in prose
    assert table == required, (sorted(required - table), sorted(table - required))

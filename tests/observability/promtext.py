"""Scrape and read a Prometheus exposition (parsed with prometheus_client.parser)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(url, headers=headers or {}, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def wait_for(url: str, ok: Callable[[Samples], bool], headers: dict[str, str] | None = None,
             timeout: float = 30) -> Samples:
    """Scrape until ``ok`` holds (other workers flush about once a second), or fail with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url, headers)
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.25)

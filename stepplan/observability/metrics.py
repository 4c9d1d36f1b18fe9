"""Prometheus metrics, correct with ``--workers N``, at a few attribute updates per call.

How a number gets from a call to a scrape:

1. The call pipeline calls :meth:`Metrics.call_settled` once per call (and a few other hooks).
   That finds the call's pre-bound series (one dict lookup by label tuple) and bumps plain
   Python counters and bucket arrays: no lock, no shared-memory write, no ``.labels()``.
2. About once a second (:meth:`Metrics.run`), and right before this process answers a scrape,
   :meth:`Metrics.flush` adds what accumulated to the prometheus-client children, and
   :meth:`Metrics.publish` sets the gauges from their sources (meter, upstreams, requests in flight).
3. Under ``stepplan serve``, prometheus-client runs in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``
   is a private directory made for each server start (:func:`prepare_multiprocess_dir`, before any
   worker starts), every worker writes its own files, and a scrape (any worker, or the separate
   metrics port served by the parent process) sums them. Gauges use ``livesum``: only live
   processes count; a worker removes its gauge files when it stops, and a scrape removes those
   of processes that died. Counters and histograms of a worker that died stay (they never go back).

So a scrape sees another worker's calls at most ~1 s late; a stopping worker flushes first.
Measured cost: docs/operating.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..billing.pricing import MICRO

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger("stepplan.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FLUSH_SECONDS = 1.0

# Buckets: the OpenTelemetry GenAI semantic conventions' advice where there is one.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                    163.84, 327.68, 655.36)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                25.0, 50.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    900.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                         2.5)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output", "reasoning")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "429", "5xx", "4xx", "broken_stream", "bad_response")
OTHER = "other"  # the model label of a name that is not in the catalog (labels stay bounded)

# Set by Gateway.start_call: the error boundary counts only refusals that happened before it
# (a bad key, a malformed body); everything after is counted by the call itself.
admitted: ContextVar[bool] = ContextVar("stepplan_admitted", default=False)


# ============================================================================ multiprocess set-up
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir() -> str:
    """A private, empty ``PROMETHEUS_MULTIPROC_DIR`` for this server start, set in the environment
    the workers inherit. Must run before prometheus-client is imported in this process. Directories
    left by earlier starts whose process is gone (a crash, a SIGKILL) are removed."""
    base = tempfile.gettempdir()
    for old in glob.glob(os.path.join(base, "stepplan-metrics-*")):
        m = re.match(r"stepplan-metrics-(\d+)-", os.path.basename(old))
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"stepplan-metrics-{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def prune_dead(path: str) -> None:
    """Remove the live-gauge files of processes that are gone (their gauges no longer count)."""
    from prometheus_client import multiprocess

    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = re.search(r"_(\d+)\.db$", f)
        if m and not _pid_alive(int(m.group(1))):
            multiprocess.mark_process_dead(int(m.group(1)), path)


class LiveMultiProcessCollector:
    """prometheus-client's multiprocess collector that first forgets processes that died."""

    def __init__(self, path: str):
        from prometheus_client import multiprocess

        self.path = path
        self._inner = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Any]:
        prune_dead(self.path)
        return self._inner.collect()


def exposition_registry() -> Any:
    """What a scrape renders: every process's files in multiprocess mode."""
    from prometheus_client import CollectorRegistry

    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        raise RuntimeError(f"{MULTIPROC_ENV} is not set")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveMultiProcessCollector(path))
    return registry


def start_metrics_server(host: str, port: int) -> Any:
    """Serve ``/metrics`` (any path) on ``host:port`` from a thread of this process (the parent of the
    workers under ``stepplan serve``), reading every worker's files. No token: bind it to loopback or
    a network only the scraper reaches."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=exposition_registry())
    return server


# ============================================================================ accumulators
class _Count:
    __slots__ = ("child", "n")

    def __init__(self, child: Any):
        self.child = child
        self.n: float = 0

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0
            self.child.inc(n)


class _Scaled(_Count):
    """An integer count (micro-credits) exposed in a larger unit (Credit)."""

    __slots__ = ("scale",)

    def __init__(self, child: Any, scale: float):
        super().__init__(child)
        self.scale = scale

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0
            self.child.inc(n / self.scale)


class _Hist:
    """Bucket counts and a sum, added to a prometheus-client histogram child on flush."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any):
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1  # le: a value equal to a bound is in that bucket
        self.total += v

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        self.counts = [0] * len(counts)
        total, self.total = self.total, 0.0
        child = self.child
        child._sum.inc(total)
        buckets = child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)


class _CallSeries:
    """Everything one call updates, bound once per label tuple."""

    __slots__ = ("account", "disconnects", "duration", "requests", "tokens", "tpot", "ttft", "upstream",
                 "usage_in", "usage_out")

    def __init__(self) -> None:
        self.requests: _Count
        self.tokens: tuple[_Count, _Count, _Count, _Count, _Count]
        self.usage_in: _Hist
        self.usage_out: _Hist
        self.duration: _Hist
        self.ttft: _Hist
        self.tpot: _Hist
        self.upstream: _Hist
        self.disconnects: _Count | None = None


# ============================================================================ the metrics
class Metrics:
    """This process's metrics. ``model_ids`` bounds the model labels (anything else is ``other``);
    ``upstream_of`` names the upstream serving a model id."""

    def __init__(self, model_ids: Iterable[str], upstream_of: Callable[[str], str], *,
                 account_labels: bool = False):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess = values.ValueClass is not values.MutexValue
        self.model_ids = frozenset(model_ids)
        self.upstream_of = upstream_of
        self.account_labels = account_labels
        r = self.registry = CollectorRegistry(auto_describe=False)
        gen_ai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"]

        # --- calls
        self.requests = Counter("stepplan_requests", "Model calls by requested model, served model, client "
                                "protocol, stream or not, and outcome (ok or the StepFun error code).",
                                ["model", "served_model", "protocol", "stream", "code"], registry=r)
        self.tokens = Counter("stepplan_tokens", "Tokens billed, by type: input (uncached), cache_read, "
                              "cache_write, output (reasoning included), reasoning.",
                              ["model", "served_model", "type"], registry=r)
        self.token_usage = Histogram("gen_ai_client_token_usage", "Tokens per call (OpenTelemetry GenAI "
                                     "gen_ai.client.token.usage): input (all prompt tokens) and output.",
                                     [*gen_ai, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r)
        self.duration = Histogram("gen_ai_server_request_duration_seconds", "Call duration from admission "
                                  "to settlement (gen_ai.server.request.duration); error_type is the error "
                                  "code, empty on success.", [*gen_ai, "error_type"], buckets=DURATION_BUCKETS,
                                  registry=r)
        self.ttft = Histogram("gen_ai_server_time_to_first_token_seconds", "Streamed calls: admission to the "
                              "first event from the upstream (gen_ai.server.time_to_first_token).", gen_ai,
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("gen_ai_server_time_per_output_token_seconds", "Streamed calls: time per output "
                              "token after the first (gen_ai.server.time_per_output_token).", gen_ai,
                              buckets=TPOT_BUCKETS, registry=r)
        self.h_overhead = Histogram("stepplan_overhead_seconds", "The gateway's own time per call: arrival to "
                                  "response head minus upstream waiting (x-stepplan-overhead-ms).",
                                  ["protocol", "stream"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.upstream_time = Histogram("stepplan_upstream_seconds", "Time spent waiting on upstreams per call "
                                       "(to the first event for streams).", ["upstream", "stream"],
                                       buckets=UPSTREAM_BUCKETS, registry=r)
        self.disconnects = Counter("stepplan_client_disconnects", "Calls whose client went away before the end.",
                                   ["protocol", "stream"], registry=r)
        self.fallbacks = Counter("stepplan_fallbacks", "Calls handed to the next engine after the first failed "
                                 "before any byte (served_model: the engine that failed).", ["served_model"],
                                 registry=r)
        # --- Credit
        self.credit = Counter("stepplan_credit_charged", "Credit charged to accounts (ledger entries written).",
                              ["model", "served_model"], registry=r)
        self.uncollected = Counter("stepplan_credit_uncollected", "Credit calls cost beyond what their accounts "
                                   "had left (should stay 0).", ["model", "served_model"], registry=r)
        self.plan_credit = Counter("stepplan_plan_credit_charged", "Credit charged, by plan.", ["plan"],
                                   registry=r)
        self.plan_uncollected = Counter("stepplan_plan_credit_uncollected", "Credit uncollected, by plan.",
                                        ["plan"], registry=r)
        self.batch_size = Histogram("stepplan_ledger_batch_size", "Ledger entries per group commit.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("stepplan_ledger_batch_seconds", "Duration of one group commit.",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=r)
        # --- router
        self.decisions = Counter("stepplan_router_decisions", "step-router-v1 decisions by chosen engine; sticky: "
                                 "the conversation was held on Pro.", ["engine", "sticky"], registry=r)
        self.score = Histogram("stepplan_router_score", "step-router-v1 scores (higher: harder, to Pro).",
                               buckets=SCORE_BUCKETS, registry=r)
        # --- upstreams
        self.up_errors = Counter("stepplan_upstream_errors", "Failed upstream attempts by kind (connect, timeout, "
                                 "429, 5xx, 4xx, broken_stream, bad_response).", ["upstream", "kind"], registry=r)
        self.retries = Counter("stepplan_upstream_retries", "Upstream attempts retried.", ["upstream"], registry=r)
        # --- gauges: set by every process about once a second; the scrape sums the live processes
        self.g_inflight = Gauge("stepplan_requests_in_flight", "HTTP requests being served.", registry=r,
                                multiprocess_mode="livesum")
        self.g_up_inflight = Gauge("stepplan_upstream_in_flight", "Upstream calls open.", ["upstream"],
                                   registry=r, multiprocess_mode="livesum")
        self.g_reservations = Gauge("stepplan_reservations_in_flight", "Credit reservations not yet settled.",
                                    registry=r, multiprocess_mode="livesum")
        self.g_lease = Gauge("stepplan_lease_credit_held", "Credit leased from the database and not yet used.",
                             registry=r, multiprocess_mode="livesum")
        self.g_queue = Gauge("stepplan_ledger_queue_depth", "Ledger entries waiting for the group commit.",
                             registry=r, multiprocess_mode="livesum")
        self.g_processes = Gauge("stepplan_processes", "Gateway worker processes recording metrics.", registry=r,
                                 multiprocess_mode="livesum")
        # --- opt-in: per account and key ([server] metrics_account_labels = true)
        if account_labels:
            self.acct_requests = Counter("stepplan_account_requests", "Model calls per account and key (opt-in).",
                                         ["account", "key_id", "code"], registry=r)
            self.acct_credit = Counter("stepplan_account_credit_charged", "Credit charged per account (opt-in).",
                                       ["account_id", "key_id"], registry=r)

        self._accs: list[_Count | _Hist] = []
        self._series: dict[tuple[str, str, str, bool, str], _CallSeries] = {}
        self._token_accs: dict[tuple[str, str], tuple[_Count, _Count, _Count, _Count, _Count]] = {}
        self._simple: dict[tuple[Any, ...], Any] = {}  # (metric, labels…) → accumulator
        self._credit_accs: dict[tuple[str, str, str | None], tuple[_Count, _Count, _Count, _Count]] = {}
        self._overhead_accs: dict[tuple[str, bool], _Hist] = {}
        self._up_inflight: dict[str, int] = {}
        self.gauge_sources: list[Callable[[], Mapping[str, float]]] = []
        self.requests_in_flight: Callable[[], int] = lambda: 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ binding
    def _count(self, metric: Any, *labels: str, scale: float | None = None) -> _Count:
        key = (id(metric), *labels)
        acc = self._simple.get(key)
        if acc is None:
            child = metric.labels(*labels) if labels else metric
            acc = self._simple[key] = _Count(child) if scale is None else _Scaled(child, scale)
            self._accs.append(acc)
        return acc

    def _hist(self, metric: Any, *labels: str) -> _Hist:
        key = (id(metric), *labels)
        acc = self._simple.get(key)
        if acc is None:
            acc = self._simple[key] = _Hist(metric.labels(*labels) if labels else metric)
            self._accs.append(acc)
        return acc

    def model_label(self, name: str) -> str:
        return name if name in self.model_ids else OTHER

    def _bind(self, key: tuple[str, str, str, bool, str]) -> _CallSeries:
        model, served, protocol, stream, code = key
        st = "true" if stream else "false"
        upstream = self.upstream_of(served) if served in self.model_ids else ""
        gen = ("chat", upstream, model, served)
        s = _CallSeries()
        s.requests = self._count(self.requests, model, served, protocol, st, code)
        toks = self._token_accs.get((model, served))
        if toks is None:
            toks = self._token_accs[(model, served)] = tuple(  # type: ignore[assignment]
                self._count(self.tokens, model, served, t) for t in TOKEN_TYPES)
        s.tokens = toks  # type: ignore[assignment]
        s.usage_in = self._hist(self.token_usage, *gen, "input")
        s.usage_out = self._hist(self.token_usage, *gen, "output")
        s.duration = self._hist(self.duration, *gen, "" if code == "ok" else code)
        s.ttft = self._hist(self.ttft, *gen)
        s.tpot = self._hist(self.tpot, *gen)
        s.upstream = self._hist(self.upstream_time, upstream or "none", st)
        if code == "client_closed_request":
            s.disconnects = self._count(self.disconnects, protocol, st)
        self._series[key] = s
        return s

    # ------------------------------------------------------------------ hot path
    def call_settled(self, model: str, served: str, protocol: str, stream: bool, code: str, usage: Any,
                     duration: float, ttft: float | None, upstream_s: float) -> None:
        """One settled call (every admitted call, exactly once)."""
        key = (model, served, protocol, stream, code)
        s = self._series.get(key) or self._bind(key)
        s.requests.n += 1
        t_in, t_cr, t_cw, t_out, t_re = s.tokens
        t_in.n += usage.input
        t_cr.n += usage.cache_read
        t_cw.n += usage.cache_write
        t_out.n += usage.output
        t_re.n += usage.reasoning
        if usage.known or usage.output:
            s.usage_in.observe(usage.input + usage.cache_read + usage.cache_write)
            s.usage_out.observe(usage.output)
        s.duration.observe(duration)
        if ttft is not None and code == "ok":
            s.ttft.observe(ttft)
            if usage.output > 1:
                s.tpot.observe((duration - ttft) / (usage.output - 1))
        s.upstream.observe(upstream_s)
        if s.disconnects is not None:
            s.disconnects.n += 1

    def refused(self, model: str, protocol: str, stream: bool | None, code: str) -> None:
        """A model call refused before it was admitted (bad key, bad body, unknown model, 402, 429…)."""
        st = "unknown" if stream is None else ("true" if stream else "false")
        self._count(self.requests, model, "", protocol, st, code).n += 1

    def account_call(self, account: str, key_id: int, code: str) -> None:
        if self.account_labels:
            self._count(self.acct_requests, account, str(key_id), code).n += 1

    def overhead(self, protocol: str, stream: bool, seconds: float) -> None:
        acc = self._overhead_accs.get((protocol, stream))
        if acc is None:
            acc = self._overhead_accs[(protocol, stream)] = self._hist(self.h_overhead, protocol,
                                                                       "true" if stream else "false")
        acc.observe(seconds)

    def fallback(self, served: str) -> None:
        self._count(self.fallbacks, served).n += 1

    def routed(self, engine: str, sticky: bool, score: float | None) -> None:
        self._count(self.decisions, engine, "true" if sticky else "false").n += 1
        if score is not None:
            self._hist(self.score).observe(score)

    # ------------------------------------------------------------------ ledger (CreditMeter.observer)
    def ledger_batch(self, entries: int, seconds: float) -> None:
        self._hist(self.batch_size).observe(entries)
        self._hist(self.batch_seconds).observe(seconds)

    def ledger_entry(self, entry: Mapping[str, Any], plan: str | None, charged: int, uncollected: int) -> None:
        key = (entry["requested_model"], entry["served_model"], plan)
        accs = self._credit_accs.get(key)
        if accs is None:
            model, served, p = self.model_label(key[0]), self.model_label(key[1]), plan or "none"
            accs = self._credit_accs[key] = (
                self._count(self.credit, model, served, scale=MICRO), self._count(self.plan_credit, p, scale=MICRO),
                self._count(self.uncollected, model, served, scale=MICRO),
                self._count(self.plan_uncollected, p, scale=MICRO))
        accs[0].n += charged
        accs[1].n += charged
        if uncollected:
            accs[2].n += uncollected
            accs[3].n += uncollected
        if self.account_labels:
            self._count(self.acct_credit, str(entry["account_id"]), str(entry["key_id"]), scale=MICRO).n += charged

    # ------------------------------------------------------------------ upstreams (engines/_http observer)
    def upstream_started(self, upstream: str) -> None:
        self._up_inflight[upstream] = self._up_inflight.get(upstream, 0) + 1

    def upstream_finished(self, upstream: str) -> None:
        self._up_inflight[upstream] -= 1

    def upstream_error(self, upstream: str, kind: str, retrying: bool) -> None:
        self._count(self.up_errors, upstream, kind).n += 1
        if retrying:
            self._count(self.retries, upstream).n += 1

    # ------------------------------------------------------------------ flush, publish, expose
    def flush(self) -> None:
        for acc in self._accs:
            acc.flush()

    def publish(self) -> None:
        """Set this process's gauges from their sources."""
        self.g_inflight.set(self.requests_in_flight())
        self.g_processes.set(1)
        for name, n in self._up_inflight.items():
            self.g_up_inflight.labels(name).set(n)
        for source in self.gauge_sources:
            try:
                values = source()
            except Exception:  # a gauge source must never break the flush loop
                log.exception("metrics gauge source failed")
                continue
            if "reservations_in_flight" in values:
                self.g_reservations.set(values["reservations_in_flight"])
            if "lease_credit_held" in values:
                self.g_lease.set(values["lease_credit_held"])
            if "ledger_queue_depth" in values:
                self.g_queue.set(values["ledger_queue_depth"])

    def sync(self) -> None:
        self.flush()
        self.publish()

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's numbers brought up to date first, then
        every process's (multiprocess mode) or this registry's."""
        from prometheus_client import generate_latest

        self.sync()
        registry: Collector | Any = exposition_registry() if self.multiprocess else self.registry
        return generate_latest(registry)

    async def run(self) -> None:
        """Flush and publish about once a second until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                self.sync()
            except Exception:
                log.exception("metrics flush failed")

    def start(self) -> None:
        self.sync()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="metrics-flush")

    async def stop(self) -> None:
        """Flush what is left; in multiprocess mode this process's gauges stop counting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess

            path = os.environ.get(MULTIPROC_ENV)
            if path:
                multiprocess.mark_process_dead(os.getpid(), path)


def upstream_error_kind(status: int) -> str:
    if status == 429:
        return "429"
    return "5xx" if status >= 500 else "4xx"


__all__ = ["CONTENT_TYPE", "Metrics", "admitted", "prepare_multiprocess_dir", "start_metrics_server"]

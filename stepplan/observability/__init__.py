"""Observability: Prometheus metrics, OpenTelemetry traces, call logs and readiness.

``metrics`` records every call into plain per-process accumulators and flushes them to
prometheus-client about once a second (and right before a scrape), so a call pays for a few
attribute updates, not for a locked write per series; ``tracing`` is a single boolean check
unless OpenTelemetry is configured; ``calls`` is the one hook the call pipeline uses for
all three (and for the per-call log line); ``health`` holds the readiness checks shared by
``/readyz`` and ``stepplan doctor``. See docs/operating.md.
"""

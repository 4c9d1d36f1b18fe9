"""The one hook the call pipeline uses: a settled call becomes a log record, metrics and span
attributes; refusals, fallbacks, router decisions and the gateway overhead are counted here too.

:class:`CallObserver` is built once per process (``app.create_app``) and held by the
:class:`~stepplan.pipeline.Gateway`. Without metrics (``[server] metrics = false``) it only logs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import logs
from ..logs import call_line, call_record
from . import tracing
from .metrics import Metrics

if TYPE_CHECKING:
    from ..pipeline import Call
    from ..protocols.canonical import Request, Usage

log = logging.getLogger("stepplan.call")

# Call statuses (the meter's Outcome.status) → the `code` label when no error code is known.
_STATUS_CODES = {"ok": "ok", "client_disconnect": "client_closed_request", "upstream_error": "upstream_error",
                 "error": "internal_error"}


def _credit(micro: Any) -> str | None:
    """Micro-credits as an exact decimal Credit string (``71.55``), None when not metered."""
    if not isinstance(micro, int):
        return None
    whole, frac = divmod(micro, 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


class CallObserver:
    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    # ------------------------------------------------------------------ the settled call
    def settled(self, call: Call, usage: Usage, status: str, first_byte: float | None, now: float) -> None:
        """Exactly once per admitted call, from ``Call._settle`` (after the meter took the settlement)."""
        code = call.error_code if status == "upstream_error" and call.error_code else _STATUS_CODES.get(status,
                                                                                                        status)
        served = call.served_model
        duration = now - call.t0
        ttft = None if first_byte is None else first_byte - call.t0
        key = call.key
        hold = call.reservation.hold
        cost = hold.cost if hold is not None else None
        if logs.json_format:
            trace_id = call.trace_id
            if tracing.enabled:
                trace_id = format(tracing.current_span().get_span_context().trace_id, "032x")
            route = call.route
            call_record(log, {
                "trace_id": trace_id, "request_id": call.trace_id, "account": key.account_name,
                "key_id": key.key_id, "model": call.spec.id, "served_model": served.id, "protocol": call.protocol,
                "stream": bool(call.req.stream), "status": status, "code": code,
                "tokens": {"input": usage.input, "cache_read": usage.cache_read, "cache_write": usage.cache_write,
                           "output": usage.output, "reasoning": usage.reasoning, "counted_locally": not usage.known},
                "credit": _credit(cost), "ms": round(duration * 1000, 3),
                "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
                "upstream_ms": round(call.upstream_s * 1000, 3), "route_reason": route.reason,
                "route_score": route.score,
            }, "")
        else:
            call_line(log, f"trace={call.trace_id} account={key.account_name} key={key.key_id} model={call.spec.id} "
                           f"served={served.id} status={status} in={usage.input} cache={usage.cache_read} "
                           f"out={usage.output} ms={duration * 1000:.1f}")
        m = self.metrics
        if m is not None:
            m.call_settled(call.spec.id, served.id, call.protocol, bool(call.req.stream), code, usage, duration, ttft,
                           call.upstream_s)
            if m.account_labels:
                m.account_call(key.account_name, key.key_id, code)
        if tracing.enabled:
            self._trace(call, usage, code, cost)

    def _trace(self, call: Call, usage: Usage, code: str, cost: Any) -> None:
        served = call.served_model
        span = tracing.current_span()
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": call.spec.id,
            "gen_ai.response.model": served.id,
            "gen_ai.provider.name": call.gateway.settings.upstream_for(served.id).name,
            "gen_ai.usage.input_tokens": usage.input + usage.cache_read + usage.cache_write,
            "gen_ai.usage.output_tokens": usage.output, "stepplan.protocol": call.protocol,
            "stepplan.stream": bool(call.req.stream), "stepplan.code": code, "stepplan.request_id": call.trace_id,
        }
        if usage.cache_read:
            attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
        if usage.cache_write:
            attrs["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
        if usage.reasoning:
            attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
        if call.finish is not None:
            attrs["gen_ai.response.finish_reasons"] = [call.finish]
        if call.route.reason:
            attrs["stepplan.route.reason"] = call.route.reason
        if code != "ok":
            attrs["error.type"] = code
        if isinstance(cost, int):
            attrs["stepplan.credit"] = _credit(cost)
        span.update_name(f"chat {call.spec.id}")
        span.set_attributes(attrs)
        if code != "ok":
            tracing.fail(span, code)
        if call.settlement is not None:
            tracing.settle_span(call.settlement, {"stepplan.request_id": call.trace_id})

    # ------------------------------------------------------------------ the other hooks
    def refused(self, req: Request, protocol: str, code: str) -> None:
        """A decoded call refused in ``start_call`` (unknown model, capability, 402, limits…)."""
        if self.metrics is not None:
            model = req.model if isinstance(req.model, str) else ""
            self.metrics.refused(self.metrics.model_label(model), protocol, bool(req.stream), code)

    def rejected(self, protocol: str, code: str) -> None:
        """A model call refused before its body was decoded (bad key, malformed JSON, too large)."""
        if self.metrics is not None:
            self.metrics.refused("unknown", protocol, None, code)

    def overhead(self, call: Call, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.overhead(call.protocol, bool(call.req.stream), seconds)

    def fallback(self, served: str) -> None:
        if self.metrics is not None:
            self.metrics.fallback(served)

    def routed(self, engine: str, reason: str | None, score: float | None) -> None:
        if self.metrics is not None:
            self.metrics.routed(engine, bool(reason and reason.startswith("sticky;")), score)
        if tracing.enabled:
            span = tracing.current_span()
            span.set_attribute("stepplan.route.engine", engine)
            if reason:
                span.set_attribute("stepplan.route.reason", reason)


__all__ = ["CallObserver"]

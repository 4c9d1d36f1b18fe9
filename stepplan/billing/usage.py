"""What an account has and has used: the facts behind ``GET /step_plan/v1/usage``,
``stepplan usage`` and the admin API (the shape mirrors the StepFun console's
QueryStepPlanRateLimit and QueryStepPlanUsages, spec §5.5).

``credit_buckets`` lists the live monthly pool and top-up packs in deduction order: the
bucket that expires first comes first (ties by bucket id), as the meter draws on them.

Amounts are shown twice: ``credit_*`` in whole Credits as integer strings (as the console
does; residuals rounded down) and ``*_micro`` in exact micro-credits. Left rates are
decimal strings with 6 places (residual / total, rounded down).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..store import ledger
from ..store import subscriptions as store
from ..store.models import CreditPot, Subscription
from . import subscriptions
from .clock import iso
from .plans import BillingConfig, yuan
from .pricing import MICRO, credits_str

BUCKET_TYPES = {"subscription": 1, "topup": 2}


def left_rate(residual: int, total: int) -> str:
    if total <= 0:
        return "0"
    micro = max(0, residual) * 1_000_000 // total
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


def deduction_order(pots: Iterable[CreditPot]) -> list[CreditPot]:
    """Credit buckets in the order calls draw on them: earliest expiry first, ties by id
    (the meter's order, :mod:`stepplan.billing.state`). ``credit_buckets`` is listed in it."""
    return sorted(pots, key=lambda p: (p.expires_at, p.id))


def _bucket(p: CreditPot, sub: Subscription | None) -> dict[str, Any]:
    residual = p.total - p.used
    next_reset = 0
    if p.kind == "subscription" and sub is not None and p.expires_at < sub.term_end:
        next_reset = p.expires_at
    return {
        "id": p.id, "type": BUCKET_TYPES.get(p.kind, 0), "kind": p.kind, "source": p.source,
        "credit_total": credits_str(p.total), "credit_residual": credits_str(residual),
        "credit_total_micro": str(p.total), "credit_residual_micro": str(residual),
        "credit_in_flight_micro": str(p.leased), "starts_at": p.starts_at, "expire_at": p.expires_at,
        "next_reset_at": next_reset,
    }


async def account_usage(s: AsyncSession, cfg: BillingConfig, account_id: int, now: int, *,
                        since: int | None = None, until: int | None = None, model: str | None = None
                        ) -> dict[str, Any]:
    """Plan, buckets, left rates, windows and per-model usage records of one account."""
    sub = await store.current_subscription(s, account_id)
    pots = await store.live_pots(s, account_id, now)
    if subscriptions.needs_refresh(sub, pots, cfg, now):  # a new cycle or window is due: issue it first
        await store.lock_account(s, account_id, now)
        sub = await subscriptions.ensure_current(s, cfg, account_id, now)
        await s.flush()
        pots = await store.live_pots(s, account_id, now)
    if sub is not None and not (sub.term_start <= now < sub.term_end):
        sub = None
    credit = deduction_order(p for p in pots if p.kind in BUCKET_TYPES)
    pool = [p for p in credit if p.kind == "subscription"]
    packs = [p for p in credit if p.kind == "topup"]
    out: dict[str, Any] = {"status": 1, "now": now, "plan_family": 2}
    if sub is not None:
        plan = cfg.plans.get(sub.plan)
        out["subscription"] = {
            "id": sub.id, "plan": sub.plan, "name": plan.name if plan else sub.plan, "period": sub.period,
            "price": yuan(sub.price_fen), "activated_at": sub.term_start, "expired_at": sub.term_end,
            "auto_renew": sub.auto_renew, "pending_plan": sub.pending_plan,
            "monthly_credit": credits_str(plan.monthly_credits) if plan else None,
            "priority_rate": bool(plan and plan.priority),
            "concurrency_limit": plan.concurrency if plan else 0, "rpm_limit": plan.rpm if plan else 0,
        }
    else:
        out["subscription"] = None
    pool_total, pool_res = sum(p.total for p in pool), sum(p.total - p.used for p in pool)
    pack_total, pack_res = sum(p.total for p in packs), sum(p.total - p.used for p in packs)
    reset = min((p.expires_at for p in pool), default=0)
    limits: dict[str, Any] = {
        "subscription_credit_left_rate": left_rate(pool_res, pool_total),
        "subscription_credit_reset_time": reset,
        "topup_credit_left_rate": left_rate(pack_res, pack_total),
        "credit_left": credits_str(pool_res + pack_res),
        "credit_left_micro": str(pool_res + pack_res),
        "credit_buckets": [_bucket(p, sub) for p in credit],
    }
    out["plan_credit_rate_limit"] = limits
    for kind, prefix in (("window_5h", "five_hour"), ("window_week", "weekly")):
        w = next((p for p in pots if p.kind == kind), None)
        if w is not None:
            out[f"{prefix}_usage_left_rate"] = left_rate(w.total - w.used, w.total)
            out[f"{prefix}_usage_reset_time"] = w.expires_at
            out[f"{prefix}_credit_limit"] = credits_str(w.total)
        else:
            out[f"{prefix}_usage_left_rate"] = "0"
            out[f"{prefix}_usage_reset_time"] = 0
    start = since if since is not None else (sub.term_start if sub is not None else now - 30 * 86400)
    end = until if until is not None else now + 1
    out["usage"] = await usage_records(s, account_id, start, end, model)
    return out


async def usage_records(s: AsyncSession, account_id: int, since: int, until: int, model: str | None
                        ) -> dict[str, Any]:
    """Calls and credit per (requested, served) model in ``[since, until)``."""
    records = []
    total = 0
    for req_m, served, calls, charged, uncollected, inp, cr, cw, outp, reas in await ledger.usage_by_model(
            s, account_id, since, until, model):
        charged = int(charged or 0)
        total += charged
        records.append({
            "from_time": since, "to_time": until, "model_id": req_m, "served_model": served, "calls": int(calls),
            "credit_consumed": _credits_up(charged), "credit_consumed_micro": str(charged),
            "credit_uncollected_micro": str(int(uncollected or 0)),
            "tokens": {"input": int(inp or 0), "cache_read": int(cr or 0), "cache_write": int(cw or 0),
                       "output": int(outp or 0), "reasoning": int(reas or 0)},
        })
    return {"from_time": since, "to_time": until, "records": records, "total": len(records),
            "credit_consumed": _credits_up(total), "credit_consumed_micro": str(total)}


def _credits_up(micro: int) -> str:
    """Consumption is shown rounded up to whole credits (never under-reports use)."""
    return str(-(-micro // MICRO))


def describe(view: dict[str, Any]) -> str:
    """A human summary for ``stepplan usage``."""
    lines = []
    sub = view.get("subscription")
    if sub:
        lines.append(f"plan: {sub['name']} ({sub['plan']}, {sub['period']}), term {iso(sub['activated_at'])} - "
                     f"{iso(sub['expired_at'])}, auto-renew {'on' if sub['auto_renew'] else 'off'}"
                     + (f", downgrade to {sub['pending_plan']} at next cycle" if sub["pending_plan"] else ""))
    else:
        lines.append("plan: none (no active subscription)")
    lim = view["plan_credit_rate_limit"]
    lines.append(f"credit left: {lim['credit_left']} (subscription {lim['subscription_credit_left_rate']}, "
                 f"top-up {lim['topup_credit_left_rate']})")
    for b in lim["credit_buckets"]:
        lines.append(f"  bucket {b['id']} {b['kind']:<12} {b['credit_residual']:>14} / {b['credit_total']:<14} "
                     f"expires {iso(b['expire_at'])}")
    for prefix, label in (("five_hour", "5-hour"), ("weekly", "weekly")):
        if view.get(f"{prefix}_usage_reset_time"):
            lines.append(f"{label} window left {view[f'{prefix}_usage_left_rate']}, resets "
                         f"{iso(view[f'{prefix}_usage_reset_time'])}")
    u = view["usage"]
    lines.append(f"usage {iso(u['from_time'])} - {iso(u['to_time'])}: {u['credit_consumed']} credits")
    for r in u["records"]:
        served = f" (served by {r['served_model']})" if r["served_model"] != r["model_id"] else ""
        lines.append(f"  {r['model_id']}{served}: {r['calls']} calls, {r['credit_consumed']} credits")
    return "\n".join(lines)


__all__ = ["account_usage", "deduction_order", "describe", "left_rate", "usage_records"]

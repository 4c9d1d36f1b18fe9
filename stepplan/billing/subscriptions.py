"""Subscriptions and credit pots: subscribe, upgrade, downgrade, renew, top up, issue cycles.

Every change runs in one transaction that starts by locking the account
(:func:`stepplan.store.subscriptions.lock_account`), so two changes to one account never
interleave and every gateway process reloads the account before its next reservation.
The statements are in :mod:`stepplan.store.subscriptions`; this module decides what they do.

Cycles. A term of ``months`` months starts at ``term_start``; monthly cycle ``k`` runs from
``add_months(term_start, k)`` to ``add_months(term_start, k + 1)``. The cycle's pool is a
``subscription`` pot issued lazily (by the first reservation, usage query or admin action
that needs it) and expiring at the cycle's end: what is left is cleared, never carried over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..store import subscriptions as db
from ..store.models import CreditPot, Subscription
from .clock import FIVE_HOURS, WEEK, add_months, cycle_index, iso
from .plans import PERIODS, BillingConfig, Plan, yuan

WINDOW_KINDS = {"window_5h": FIVE_HOURS, "window_week": WEEK}


class BillingError(Exception):
    """A billing action that cannot be done; the message says why and what to do."""


async def _issue(s: AsyncSession, sub: Subscription, kind: str, cycle: int, total: int, starts: int, expires: int,
                 now: int) -> CreditPot:
    pot = await db.add_pot(s, sub.account_id, kind, sub.id, cycle, sub.plan, total, starts, expires, now)
    db.add_event(s, sub.account_id, "issue", now, sub=sub, pot=pot, credits=total, pot_kind=kind, cycle=cycle,
                 expires_at=expires)
    return pot


async def ensure_current(s: AsyncSession, cfg: BillingConfig, account_id: int, now: int) -> Subscription | None:
    """Bring an account up to ``now``: end or renew finished terms, apply a scheduled
    downgrade at a new cycle, issue the current cycle's pool and window pots.
    Call with the account locked. Returns the active subscription, if any."""
    sub = await db.current_subscription(s, account_id)
    for _ in range(1000):  # at most one renewal per term; bounded anyway
        if sub is None or now < sub.term_end:
            break
        sub.status, sub.ended_at = "ended", sub.term_end
        db.add_event(s, account_id, "term_end", now, sub=sub, term_end=sub.term_end)
        if not sub.auto_renew:
            sub = None
            break
        plan = cfg.plan(sub.pending_plan or sub.plan)
        new = await db.add_subscription(s, account_id, plan.id, sub.period, plan.price(sub.period), sub.term_end,
                                        add_months(sub.term_end, PERIODS[sub.period]), True, now)
        db.add_event(s, account_id, "renew", now, sub=new, amount_fen=new.price_fen, period=new.period)
        sub = new
    if sub is None:
        return None
    k = cycle_index(sub.term_start, now)
    if await db.cycle_pot(s, sub.id, "subscription", k) is None:
        if sub.pending_plan and k > 0:
            db.add_event(s, account_id, "downgrade_applied", now, sub=sub, plan=sub.pending_plan, previous=sub.plan)
            sub.plan, sub.pending_plan = sub.pending_plan, None
        plan = cfg.plan(sub.plan)
        start = add_months(sub.term_start, k)
        await _issue(s, sub, "subscription", k, plan.monthly_credits, start,
                     min(add_months(sub.term_start, k + 1), sub.term_end), now)
    plan = cfg.plan(sub.plan)
    for kind, limit in (("window_5h", plan.window_5h), ("window_week", plan.window_week)):
        if limit:
            span = WINDOW_KINDS[kind]
            idx = (now - sub.term_start) // span
            if await db.cycle_pot(s, sub.id, kind, idx) is None:
                start = sub.term_start + idx * span
                await _issue(s, sub, kind, idx, limit, start, start + span, now)
    return sub


async def _close_pots(s: AsyncSession, sub: Subscription, now: int, reason: str) -> None:
    """End a subscription's live pools and windows now; their residual is forfeited."""
    for pot in await db.open_pots(s, sub.id, now):
        db.add_event(s, sub.account_id, "close", now, sub=sub, pot=pot, reason=reason,
                     forfeited=pot.total - pot.used - pot.leased)
        pot.expires_at = now


@dataclass(slots=True)
class SubscribeResult:
    action: str  # subscribed | upgraded | downgrade_scheduled | downgrade_cancelled | renewal_updated
    subscription_id: int
    plan: str
    period: str
    term_start: int
    term_end: int
    amount_due_fen: int
    old_unused_fen: int = 0

    def describe(self) -> str:
        base = f"{self.action}: plan {self.plan} ({self.period}), term {iso(self.term_start)} - {iso(self.term_end)}"
        if self.action == "upgraded":
            base += (f"; old plan's unused value ¥{yuan(self.old_unused_fen)} credited, "
                     f"difference due ¥{yuan(self.amount_due_fen)}")
        elif self.amount_due_fen:
            base += f"; price ¥{yuan(self.amount_due_fen)}"
        return base

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "subscription_id": self.subscription_id, "plan": self.plan,
                "period": self.period, "term_start": self.term_start, "term_end": self.term_end,
                "amount_due": yuan(self.amount_due_fen), "old_unused_value": yuan(self.old_unused_fen)}


async def subscribe(s: AsyncSession, cfg: BillingConfig, account_id: int, plan_id: str, period: str | None,
                    now: int, auto_renew: bool | None = None) -> SubscribeResult:
    """Subscribe, upgrade (now, pro-rated) or downgrade (at the next cycle)."""
    plan = _plan(cfg, plan_id)
    await db.lock_account(s, account_id, now)
    sub = await ensure_current(s, cfg, account_id, now)
    if sub is None:
        period = period or "monthly"
        new = await _new_term(s, cfg, account_id, plan, period, now, bool(auto_renew))
        db.add_event(s, account_id, "subscribe", now, sub=new, amount_fen=new.price_fen, period=period)
        return SubscribeResult("subscribed", new.id, plan.id, period, new.term_start, new.term_end, new.price_fen)
    old = cfg.plan(sub.plan)
    if plan.id == old.id:
        if auto_renew is not None:
            sub.auto_renew = auto_renew
        if sub.pending_plan:
            db.add_event(s, account_id, "downgrade_cancelled", now, sub=sub, cancelled=sub.pending_plan)
            sub.pending_plan = None
            return SubscribeResult("downgrade_cancelled", sub.id, sub.plan, sub.period, sub.term_start,
                                   sub.term_end, 0)
        if auto_renew is not None:
            return SubscribeResult("renewal_updated", sub.id, sub.plan, sub.period, sub.term_start, sub.term_end, 0)
        raise BillingError(f"the account is already subscribed to {plan.id} ({sub.period}) until "
                           f"{iso(sub.term_end)}; choose a higher plan to upgrade or a lower one to downgrade")
    if plan.rank < old.rank:
        if period is not None and period != sub.period:
            raise BillingError("a downgrade keeps the current period; omit --period")
        sub.pending_plan = plan.id
        if auto_renew is not None:
            sub.auto_renew = auto_renew
        db.add_event(s, account_id, "downgrade_scheduled", now, sub=sub, plan=plan.id, previous=old.id)
        return SubscribeResult("downgrade_scheduled", sub.id, plan.id, sub.period, sub.term_start, sub.term_end, 0)
    return await _upgrade(s, cfg, sub, old, plan, period or sub.period, now, auto_renew)


async def _upgrade(s: AsyncSession, cfg: BillingConfig, sub: Subscription, old: Plan, plan: Plan, period: str,
                   now: int, auto_renew: bool | None) -> SubscribeResult:
    if period not in plan.prices:
        raise BillingError(f"plan {plan.id} has no {period} price; periods: {', '.join(plan.prices)}")
    remaining, length = sub.term_end - now, sub.term_end - sub.term_start
    if add_months(now, PERIODS[period]) - now < remaining:
        raise BillingError(f"an upgrade must run at least as long as the current term's remaining "
                           f"{remaining // 86400} days; choose a longer --period")
    # The old term's unused value: price × (1 − used share of the period), rounded down to a fen.
    unused = sub.price_fen * remaining // length if length > 0 else 0
    price = plan.price(period)
    due = price - unused
    if due < 0:
        raise BillingError(f"{plan.id} ({period}) costs less than the unused part of the current term; "
                           "choose a longer --period")
    sub.status, sub.ended_at = "upgraded", now
    await _close_pots(s, sub, now, "upgrade")
    new = await _new_term(s, cfg, sub.account_id, plan, period, now, sub.auto_renew if auto_renew is None
                          else auto_renew)
    db.add_event(s, sub.account_id, "upgrade", now, sub=new, amount_fen=due, previous=old.id,
                 previous_subscription=sub.id, old_price_fen=sub.price_fen, old_unused_fen=unused,
                 new_price_fen=price, period=period, used_share=f"{length - remaining}/{length}")
    return SubscribeResult("upgraded", new.id, plan.id, period, new.term_start, new.term_end, due, unused)


async def _new_term(s: AsyncSession, cfg: BillingConfig, account_id: int, plan: Plan, period: str, now: int,
                    auto_renew: bool) -> Subscription:
    if period not in PERIODS:
        raise BillingError(f"unknown period {period!r}; periods: {', '.join(PERIODS)}")
    if period not in plan.prices:
        raise BillingError(f"plan {plan.id} has no {period} price; periods: {', '.join(plan.prices)}")
    sub = await db.add_subscription(s, account_id, plan.id, period, plan.price(period), now,
                                    add_months(now, PERIODS[period]), auto_renew, now)
    got = await ensure_current(s, cfg, account_id, now)
    assert got is not None and got.id == sub.id
    return sub


def _plan(cfg: BillingConfig, plan_id: str) -> Plan:
    try:
        return cfg.plan(plan_id)
    except ValueError as exc:
        raise BillingError(str(exc)) from None


async def cancel(s: AsyncSession, cfg: BillingConfig, account_id: int, now: int) -> Subscription:
    """Stop auto-renewal; the term runs to its end (no refunds, spec §5.1)."""
    await db.lock_account(s, account_id, now)
    sub = await ensure_current(s, cfg, account_id, now)
    if sub is None:
        raise BillingError("the account has no active subscription")
    sub.auto_renew = False
    db.add_event(s, account_id, "cancel", now, sub=sub)
    return sub


async def topup(s: AsyncSession, cfg: BillingConfig, account_id: int, pack_id: str, now: int) -> CreditPot:
    """Add a top-up pack (subscribers only), valid for the pack's days from now."""
    try:
        pack = cfg.pack(pack_id)
    except ValueError as exc:
        raise BillingError(str(exc)) from None
    await db.lock_account(s, account_id, now)
    sub = await ensure_current(s, cfg, account_id, now)
    if sub is None:
        raise BillingError("top-up packs are for subscribers only; subscribe to a plan first")
    try:
        pot = await db.add_pot(s, account_id, "topup", None, None, pack.id, pack.credits, now,
                               now + pack.days * 86400, now)
    except IntegrityError as exc:  # pragma: no cover - no unique key can clash for a top-up
        raise BillingError(f"could not record the top-up: {exc}") from exc
    db.add_event(s, account_id, "topup", now, pot=pot, plan=pack.id, amount_fen=pack.price, credits=pack.credits,
                 expires_at=pot.expires_at)
    db.add_event(s, account_id, "issue", now, pot=pot, plan=pack.id, credits=pack.credits, pot_kind="topup",
                 expires_at=pot.expires_at)
    return pot


def needs_refresh(sub: Subscription | None, pots: list[CreditPot], cfg: BillingConfig, now: int) -> bool:
    """True when :func:`ensure_current` has work to do for this account at ``now``."""
    if sub is None:
        return False
    if now >= sub.term_end:
        return True
    k = cycle_index(sub.term_start, now)
    mine = {(p.kind, p.cycle) for p in pots if p.subscription_id == sub.id}
    if ("subscription", k) not in mine:
        return True
    try:
        plan = cfg.plan(sub.plan)
    except ValueError:
        return False
    for kind, limit in (("window_5h", plan.window_5h), ("window_week", plan.window_week)):
        if limit and (kind, (now - sub.term_start) // WINDOW_KINDS[kind]) not in mine:
            return True
    return False


async def refresh_account(sessions: Any, cfg: BillingConfig, account_id: int, now: int
                          ) -> tuple[Subscription | None, list[CreditPot]]:
    """Read an account's subscription and live pots, issuing what is due first if needed."""
    async with sessions() as s:
        sub = await db.current_subscription(s, account_id)
        pots = await db.live_pots(s, account_id, now)
        if not needs_refresh(sub, pots, cfg, now):
            return (sub if sub is not None and sub.term_start <= now < sub.term_end else None), pots
    async with sessions() as s:
        await db.lock_account(s, account_id, now)
        sub = await ensure_current(s, cfg, account_id, now)
        await s.commit()
    async with sessions() as s:
        return sub, await db.live_pots(s, account_id, now)

"""Reservation and leasing: the account cache, holds against this process's leases, and
leases taken from the database when they run low.

A reservation holds credit in memory against a lease (:meth:`AccountState.take`); only when
the leases do not cover it does :meth:`Leasing._reserve_slow` lease more, one coroutine per
account at a time, with one guarded UPDATE per pot (:func:`stepplan.store.ledger.lease`). The
database never lets leases exceed what is left, so processes sharing it cannot overdraw.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from ..catalog import ModelSpec
from ..errors import NoSubscription, Overloaded, QuotaExceeded
from ..protocols.canonical import Request
from ..store import ledger
from ..store.accounts import KeyInfo
from ..store.keys import KEY_DAY, credits_exact
from .clock import iso
from .core import MeterCore
from .key_limits import ensure_key_pots, limits_of
from .meter import Reservation
from .pricing import Rates, credits_str
from .state import AccountState, Hold, Holds, Pot
from .subscriptions import refresh_account

log = logging.getLogger("stepplan.billing")

HEADER_REMAINING = "x-stepplan-credit-remaining"
NO_SUBSCRIPTION = ("you have no active step plan subscription; subscribe to a plan first "
                   "(administrator: stepplan subscribe ACCOUNT --plan flash-mini|flash-plus|flash-pro|flash-max)")


def reservation_amount(rates: Rates, input_tokens: int, max_output: int, cap: int) -> int:
    """The hold for a call: input estimate × input rate + max output × output rate, capped."""
    return min(cap, max(0, input_tokens) * rates.input + max(0, max_output) * rates.output)


def _key_pots_live(acct: AccountState, key: KeyInfo, now: int) -> bool:
    """Whether the account state holds a live pot for each of the key's Credit limits."""
    pots = acct.key_windows.get(key.key_id)
    if not pots:
        return False
    return all(any(p.kind == kind and p.live(now) for p in pots) for kind, _ in limits_of(key))


class Leasing:
    def __init__(self, core: MeterCore):
        self.core = core

    # ================================================================== reserve
    async def reserve(self, key: KeyInfo, spec: ModelSpec, req: Request, request_id: str,
                      input_tokens: int) -> Reservation:
        core = self.core
        now = core.clock.now()
        try:
            acct = await self.account(key.account_id, now)
        except SQLAlchemyError as exc:
            log.exception("credit metering: database error loading account %s", key.account_id)
            raise Overloaded("credit metering is temporarily unavailable; retry shortly",
                             headers={"retry-after": "1"}) from exc
        if acct.plan is None:
            raise NoSubscription(NO_SUBSCRIPTION)
        rates = core.prices.rates(spec.id, now)
        cfg = core.cfg
        max_out = req.max_tokens if req.max_tokens is not None else min(spec.max_output, cfg.reserve_output_tokens)
        amount = reservation_amount(rates, input_tokens, max_out, cfg.reserve_cap)
        plan = acct.plan
        if key.rate_limited:  # the key's own limits first: a key at its limit leaves the plan's untouched
            await core.limiter.enter(f"k{key.key_id}", key.concurrency, key.rpm, scope="key")
        try:
            await core.limiter.enter(acct.account_id, plan.concurrency, plan.rpm)
        except BaseException:
            if key.rate_limited:
                core.limiter.leave(f"k{key.key_id}")
            raise
        try:
            kw = acct.key_windows.get(key.key_id) if key.credit_limited else None
            if key.credit_limited and not _key_pots_live(acct, key, now):
                holds = None
            else:
                holds = acct.take(amount, now, time.monotonic(), kw)
            if holds is None:
                acct, holds = await self._reserve_slow(acct, amount, now, key)
        except BaseException:
            core.limiter.leave(key.account_id)
            if key.rate_limited:
                core.limiter.leave(f"k{key.key_id}")
            raise
        core.active = mono = time.monotonic()
        res = Reservation(request_id, key, req.model, amount, mono, Hold(acct, holds, now, spec))
        core.inflight[request_id] = res
        return res

    def headers(self, res: Reservation) -> dict[str, str]:
        h = res.hold
        if h is None:
            return {}
        return {HEADER_REMAINING: credits_str(h.acct.remaining(self.core.clock.now()))}

    async def _reserve_slow(self, acct: AccountState, amount: int, now: int, key: KeyInfo
                            ) -> tuple[AccountState, Holds]:
        """Lease more from the database (one coroutine per account at a time), then hold."""
        try:
            for attempt in range(3):
                if acct.dead:
                    acct = await self.account(acct.account_id, now)
                async with acct.lock:
                    if acct.dead:
                        continue
                    if acct.stale:
                        await self.load(acct, now)
                    if acct.plan is None:
                        raise NoSubscription(NO_SUBSCRIPTION)
                    if key.credit_limited and not _key_pots_live(acct, key, now):
                        await self._issue_key_pots(acct, key, now)
                    kw = acct.key_windows.get(key.key_id) if key.credit_limited else None
                    holds = acct.take(amount, now, time.monotonic(), kw)
                    if holds is None:
                        await self.lease(acct, amount, now, kw)
                        holds = acct.take(amount, now, time.monotonic(), kw)
                    if holds is not None:
                        return acct, holds
                    if attempt > 0:
                        break
                    await self.load(acct, now)  # maybe a top-up or a new cycle we have not seen yet
        except SQLAlchemyError as exc:
            log.exception("credit metering: database error leasing for account %s", acct.account_id)
            raise Overloaded("credit metering is temporarily unavailable; retry shortly",
                             headers={"retry-after": "1"}) from exc
        raise self._quota_error(acct, amount, now, key)

    async def _issue_key_pots(self, acct: AccountState, key: KeyInfo, now: int) -> None:
        """The key's first call of a day or month (in this process): issue its limit pots if no
        process has yet, and reload the account to see them. Call with ``acct.lock`` held."""
        async with self.core.sessions() as s:
            await ensure_key_pots(s, key, now)
            await s.commit()
        await self.load(acct, now)

    @staticmethod
    def _quota_error(acct: AccountState, amount: int, now: int, key: KeyInfo | None = None) -> QuotaExceeded:
        for w in (acct.key_windows.get(key.key_id, []) if key is not None else []):
            if key is not None and w.live(now) and w.total - w.used < amount:
                label, limit = (("daily", key.credit_daily) if w.kind == KEY_DAY else ("monthly", key.credit_monthly))
                return QuotaExceeded(
                    f"this API key's {label} Credit limit ({credits_exact(limit or 0)} Credit) is used up until "
                    f"{iso(w.expires_at)}: this is the key's own limit, not the plan's (the account may still have "
                    "credit); wait for the period to reset, or ask the administrator to raise the key's limit",
                    headers={"retry-after": str(max(1, w.expires_at - now))})
        for w in acct.windows:
            if w.live(now) and w.total - w.used < amount:
                label = "5-hour" if w.kind == "window_5h" else "weekly"
                return QuotaExceeded(
                    f"the plan's {label} credit limit is used up until {iso(w.expires_at)}; wait for the window "
                    "to reset, or upgrade the plan",
                    headers={"retry-after": str(max(1, w.expires_at - now))})
        left = acct.remaining(now)
        log.debug("account %s: quota exceeded for %d; pots %s", acct.account_id, amount,
                  [(p.id, p.total, p.used, p.leased, p.held) for p in acct.credit])
        return QuotaExceeded(
            f"your Step Plan credit is used up: this call needs up to {credits_str(amount)} credits and "
            f"{credits_str(left)} are left this cycle; buy a top-up pack or upgrade the plan to continue",
            headers={HEADER_REMAINING: credits_str(left)})

    # ================================================================== leases
    async def lease(self, acct: AccountState, amount: int, now: int, key_windows: list[Pot] | None = None) -> None:
        """Lease what ``amount`` needs beyond this process's free leases: credit pots earliest
        expiry first, every window limit, and the calling key's limits. Call with ``acct.lock`` held."""
        credit_deficit, window_deficits = acct.deficits(amount, now, key_windows)
        for pot in list(acct.credit):
            if credit_deficit <= 0:
                break
            if pot.live(now):
                credit_deficit -= await self._acquire(acct, pot, credit_deficit, now)
        for w, deficit in window_deficits:
            await self._acquire(acct, w, deficit, now)

    async def _acquire(self, acct: AccountState, pot: Pot, need: int, now: int) -> int:
        """Lease ``need`` (plus slack when there is room) from one pot; returns what was leased."""
        core = self.core
        slack = min(core.cfg.lease_max, max(core.cfg.lease_min, pot.leased))
        owner = core.owner
        async with core.sessions() as s:
            grant, row = await ledger.lease(s, owner, pot.id, need, slack, now)
            await s.commit()
        if row is not None:
            pot.total, pot.used = row.total, max(pot.used, row.used)
        if not grant:
            return 0
        core.stats["leases"] += 1
        if acct.dead or owner != core.owner:
            return 0  # reaped meanwhile: that lease is an orphan the sweep returns
        pot.leased += grant
        pot.last_active = time.monotonic()  # a fresh lease is not idle (the maintenance loop returns idle ones)
        return grant

    # ================================================================== accounts
    async def account(self, account_id: int, now: int) -> AccountState:
        """The cached state of an account, (re)loaded when stale, dead or past ``valid_until``."""
        accounts = self.core.accounts
        acct = accounts.get(account_id)
        if acct is not None and not acct.stale and not acct.dead and now < acct.valid_until:
            return acct
        if acct is None or acct.dead:
            acct = accounts[account_id] = AccountState(account_id, stale=True)
        async with acct.lock:
            if acct.stale or now >= acct.valid_until:
                await self.load(acct, now)
        return acct

    async def load(self, acct: AccountState, now: int) -> None:
        """Read the account's subscription and live pots (issuing what is due) into ``acct``."""
        cfg = self.core.cfg
        sub, pots = await refresh_account(self.core.sessions, cfg, acct.account_id, now)
        plan = None
        if sub is not None:
            try:
                plan = cfg.plan(sub.plan)
            except ValueError:
                log.error("account %s is subscribed to plan %r, which is not configured", acct.account_id, sub.plan)
        horizon = sub.term_end if sub is not None else now + 5
        rows = [(p.id, p.kind, p.expires_at, p.total, p.used, p.key_id) for p in pots]
        acct.update(plan, sub.id if sub is not None else None, rows, now, horizon)

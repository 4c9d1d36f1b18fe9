"""A process's in-memory view of one account: its pots, its leases and its holds.

Reservations never touch the database on the fast path. A process leases a slice of a
pot (``Pot.leased``, backed by a ``credit_leases`` row) and reserves calls against that
slice in memory (``Pot.held``). The database never lets leases exceed what a pot has
left, so however many processes reserve at once, holds ≤ leases ≤ credit.

Settlement turns part of a lease into ``used``: the charge is the call's exact cost, first
from what this process can cover (its released hold plus spare lease on the account's
pots). A cost beyond that (a call that produced more than it reserved) becomes the
settlement's ``extra``: the ledger write takes it from the pots' free credit in the same
transaction (:class:`~stepplan.store.ledger.Extra`), so a charge never exceeds credit that
exists and is never left uncollected while credit exists. Only what no pot has left is
recorded as ``uncollected`` on the ledger entry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..catalog import ModelSpec
from ..store.models import CREDIT_KINDS
from .plans import Plan


@dataclass(slots=True, eq=False)
class Pot:
    id: int
    kind: str
    expires_at: int
    total: int
    used: int  # last known from the database, plus this process's charges since
    leased: int = 0  # what this process holds on the pot (its credit_leases row)
    held: int = 0  # reserved by calls in flight here
    last_active: float = 0.0  # monotonic time of the last hold or settlement

    @property
    def free(self) -> int:
        """Leased here and not held by any call."""
        return self.leased - self.held

    @property
    def credit(self) -> bool:
        return self.kind in CREDIT_KINDS

    def live(self, now: int) -> bool:
        return self.expires_at > now


@dataclass(slots=True)
class Holds:
    credit: list[tuple[Pot, int]] = field(default_factory=list)
    windows: list[tuple[Pot, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(a for _, a in self.credit)


@dataclass(slots=True)
class Settlement:
    cost: int
    charge: int
    credit: list[tuple[int, int]]  # (pot id, micro-credits) in deduction order
    windows: list[tuple[int, int]]
    # Set when this process's leases were reclaimed: charge these pots without a lease.
    direct: bool = False
    direct_credit: list[int] = field(default_factory=list)
    direct_windows: list[int] = field(default_factory=list)
    # Cost beyond what the leases covered: taken from the pots' free credit when the entry is written.
    extra: int = 0
    extra_credit: list[int] = field(default_factory=list)  # pot ids, earliest expiry first
    extra_windows: list[int] = field(default_factory=list)

    def to_direct(self) -> None:
        self.direct_credit = [pot_id for pot_id, _ in self.credit]
        self.direct_windows = [pot_id for pot_id, _ in self.windows]
        self.direct, self.charge, self.credit, self.windows = True, 0, [], []
        self.extra, self.extra_credit, self.extra_windows = 0, [], []


@dataclass(slots=True, eq=False)
class AccountState:
    account_id: int
    plan: Plan | None = None
    subscription_id: int | None = None
    valid_until: int = 0  # reload at or after this time (cycle end, an expiry, a window end)
    pots: dict[int, Pot] = field(default_factory=dict)  # every pot this process knows (live or retired)
    credit: list[Pot] = field(default_factory=list)  # live credit pots, earliest expiry first
    windows: list[Pot] = field(default_factory=list)  # live window limits
    # live key Credit limits (key_day / key_month pots), by key id: windows for that key's calls only
    key_windows: dict[int, list[Pot]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stale: bool = False
    dead: bool = False  # this process was reaped: its leases are gone, settle directly

    def update(self, plan: Plan | None, subscription_id: int | None,
               rows: list[tuple[int, str, int, int, int]] | list[tuple[int, str, int, int, int, int | None]],
               now: int, horizon: int) -> None:
        """Merge a fresh read of the live pots (id, kind, expires_at, total, used[, key id]), keeping
        leases and holds."""
        self.plan, self.subscription_id = plan, subscription_id
        live: list[Pot] = []
        keyed: dict[int, list[Pot]] = {}
        for pot_id, kind, expires_at, total, used, *key in rows:
            pot = self.pots.get(pot_id)
            if pot is None:
                pot = self.pots[pot_id] = Pot(pot_id, kind, expires_at, total, used)
            else:
                pot.expires_at, pot.total, pot.used = expires_at, total, max(pot.used, used)
            if expires_at <= now:
                continue
            if key and key[0] is not None:
                keyed.setdefault(key[0], []).append(pot)
            live.append(pot)
        live.sort(key=lambda p: (p.expires_at, p.id))
        mine = {id(p) for ps in keyed.values() for p in ps}
        self.credit = [p for p in live if p.credit]
        self.windows = [p for p in live if not p.credit and id(p) not in mine]
        self.key_windows = keyed
        ends = [p.expires_at for p in live]
        self.valid_until = min([horizon, *ends]) if ends else horizon
        self.stale = False

    # ------------------------------------------------------------------ reservations
    def deficits(self, amount: int, now: int, key_windows: list[Pot] | None = None
                 ) -> tuple[int, list[tuple[Pot, int]]]:
        """How much more must be leased: for credit overall, and for each window (the plan's, and
        ``key_windows``: the calling key's own Credit limits)."""
        credit = amount - sum(p.free for p in self.credit if p.live(now))
        windows = [(w, amount - w.free) for w in (*self.windows, *(key_windows or ()))
                   if w.live(now) and w.free < amount]
        return max(0, credit), windows

    def take(self, amount: int, now: int, mono: float, key_windows: list[Pot] | None = None) -> Holds | None:
        """Hold ``amount`` against this process's leases, earliest expiry first; all or nothing.
        ``key_windows``: the calling key's Credit limits, held like the plan's windows."""
        if len(self.credit) == 1 and not self.windows and not key_windows:  # the common case: one monthly pool
            p = self.credit[0]
            if p.expires_at > now and p.leased - p.held >= amount:
                p.held += amount
                p.last_active = mono
                holds = Holds()
                holds.credit.append((p, amount))
                return holds
        if len(self.credit) == 1 and not self.windows and key_windows:  # one pool and the key's own limits
            p = self.credit[0]
            if p.expires_at > now and p.leased - p.held >= amount and all(
                    w.expires_at > now and w.leased - w.held >= amount for w in key_windows):
                p.held += amount
                p.last_active = mono
                holds = Holds()
                holds.credit.append((p, amount))
                for w in key_windows:
                    w.held += amount
                    w.last_active = mono
                    holds.windows.append((w, amount))
                return holds
        live = [p for p in self.credit if p.live(now)]
        if sum(p.free for p in live if p.free > 0) < amount:
            return None
        windows = [w for w in (*self.windows, *(key_windows or ())) if w.live(now)]
        if any(w.free < amount for w in windows):
            return None
        holds = Holds()
        left = amount
        for p in live:
            if left <= 0:
                break
            x = min(p.free, left)
            if x > 0:
                p.held += x
                p.last_active = mono
                holds.credit.append((p, x))
                left -= x
        for w in windows:
            w.held += amount
            w.last_active = mono
            holds.windows.append((w, amount))
        return holds

    def release(self, holds: Holds) -> None:
        for p, x in holds.credit:
            p.held -= x
        for w, x in holds.windows:
            w.held -= x
        holds.credit.clear()
        holds.windows.clear()

    def settle(self, holds: Holds, cost: int, now: int, mono: float) -> Settlement:
        """Release a call's holds and charge its exact cost (capped by what can be covered)."""
        if len(holds.credit) == 1 and not holds.windows and not self.dead:
            p, x = holds.credit[0]
            if self.credit and self.credit[0] is p and cost <= p.leased - p.held + x:
                # the common case: the earliest pot's lease covers the cost
                p.held -= x
                p.leased -= cost
                p.used += cost
                p.last_active = mono
                holds.credit.clear()
                return Settlement(cost, cost, [(p.id, cost)] if cost else [], [])
        if len(holds.credit) == 1 and holds.windows and not self.dead:
            p, x = holds.credit[0]
            if (self.credit and self.credit[0] is p and cost <= p.leased - p.held + x
                    and all(cost <= w.leased - w.held + wx for w, wx in holds.windows)):
                # one pool and window limits (the plan's or the key's), all covering the cost
                p.held -= x
                p.leased -= cost
                p.used += cost
                p.last_active = mono
                charged: list[tuple[int, int]] = []
                for w, wx in holds.windows:
                    w.held -= wx
                    w.leased -= cost
                    w.used += cost
                    w.last_active = mono
                    if cost:
                        charged.append((w.id, cost))
                holds.credit.clear()
                holds.windows.clear()
                return Settlement(cost, cost, [(p.id, cost)] if cost else [], charged)
        held_pots = [p for p, _ in holds.credit]
        windows = [w for w, _ in holds.windows]
        self.release(holds)
        if self.dead:
            order = sorted({*held_pots, *self.credit}, key=lambda p: (p.expires_at, p.id))
            return Settlement(cost, 0, [], [], True, [p.id for p in order], [w.id for w in windows])
        candidates = sorted({*held_pots, *(p for p in self.credit if p.live(now))}, key=lambda p: (p.expires_at, p.id))
        charge = min(cost, sum(max(0, p.free) for p in candidates))
        for w in windows:
            charge = min(charge, max(0, w.free))
        credit: list[tuple[int, int]] = []
        left = charge
        for p in candidates:
            if left <= 0:
                break
            x = min(max(0, p.free), left)
            if x:
                p.leased -= x
                p.used += x
                p.last_active = mono
                credit.append((p.id, x))
                left -= x
        assert left == 0, "charge exceeded what the leases cover"
        win: list[tuple[int, int]] = []
        if charge:
            for w in windows:
                w.leased -= charge
                w.used += charge
                w.last_active = mono
                win.append((w.id, charge))
        st = Settlement(cost, charge, credit, win)
        if cost > charge:
            # More than this process holds: the ledger write takes the rest from free credit.
            st.extra = cost - charge
            st.extra_credit = [p.id for p in candidates]
            st.extra_windows = [w.id for w in windows] or [w.id for w in self.windows if w.live(now)]
            self.stale = True  # the pots' ``used`` moves behind our back: reload before the next lease
        return st

    def remaining(self, now: int) -> int:
        """Credit left as this process knows it: residual of live pots minus calls in flight here."""
        return max(0, sum(p.total - p.used - p.held for p in self.credit if p.live(now)))


@dataclass(slots=True, eq=False)
class Hold:
    """What the credit meter keeps for one reservation (``Reservation.hold``) until it settles."""

    acct: AccountState
    holds: Holds
    started_at: int  # billing time of the reservation: the prices that apply, the entry's ``started_at``
    spec: ModelSpec  # the model reserved for: an abandoned reservation is settled against it
    fut: asyncio.Future[None] | None = None  # set by settle: done when the ledger entry is durable
    cost: int | None = None  # set by settle: the call's exact cost (for its log record and span)

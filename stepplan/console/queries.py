"""The console's reads of the ledger, keys and accounts (writes go through the store and
billing functions the CLI and admin API use). Every holder query takes the account id from
the session, never from the request."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..store.models import Account, ApiKey, UsageEntry

DAY = 86400


@dataclass(slots=True)
class CallFilter:
    account_id: int | None = None
    model: str | None = None  # requested or served
    status: str | None = None
    trace_id: str | None = None
    since: int | None = None
    until: int | None = None
    before_id: int | None = None  # paging: entries older than this id


@dataclass(slots=True)
class DayRow:
    day: int  # days since 1970-01-01 (UTC)
    requested: str
    served: str
    calls: int
    charged: int
    uncollected: int
    input: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int


async def daily(s: AsyncSession, account_id: int, since: int, until: int) -> list[DayRow]:
    """Per (UTC day, requested model, served model) in ``[since, until)``: everything the Usage page
    shows (charts, per-model totals, the router split) from one pass over the account's entries."""
    e = UsageEntry
    day = e.created_at // DAY  # integer division on SQLite and PostgreSQL
    q = (select(day, e.requested_model, e.served_model, func.count(), func.sum(e.charged), func.sum(e.uncollected),
                func.sum(e.input_tokens), func.sum(e.cache_read_tokens), func.sum(e.cache_write_tokens),
                func.sum(e.output_tokens), func.sum(e.reasoning_tokens))
         .where(e.account_id == account_id, e.created_at >= since, e.created_at < until)
         .group_by(day, e.requested_model, e.served_model))
    return [DayRow(int(r[0]), r[1], r[2], *(int(v or 0) for v in r[3:])) for r in (await s.execute(q)).all()]


class DayCache:
    """The Usage page's per-day rows of days that are over, per process. The ledger is append-only
    and an entry's ``created_at`` is its settle time, so a day ``settle_grace`` seconds past its end
    no longer changes: it is read from the database once, then from here. Today (and a day just
    ended) is always read fresh. Bounded: the oldest days are dropped first."""

    def __init__(self, max_days: int = 200_000, settle_grace: int = 3600):
        self.max_days = max_days
        self.settle_grace = settle_grace
        self._days: OrderedDict[tuple[int, int], list[DayRow]] = OrderedDict()

    async def rows(self, s: AsyncSession, account_id: int, since: int, until: int, now: int) -> list[DayRow]:
        """The same rows as :func:`daily` for ``[since, until)``."""
        # Whole days inside the range that are over are cached; the edges and today read fresh.
        lo = -(-since // DAY)
        hi = min((now - self.settle_grace) // DAY - 1, until // DAY - 1)
        if lo > hi:
            return await daily(s, account_id, since, until)
        missing = [d for d in range(lo, hi + 1) if (account_id, d) not in self._days]
        if missing:
            got: dict[int, list[DayRow]] = {d: [] for d in range(missing[0], missing[-1] + 1)}
            for r in await daily(s, account_id, missing[0] * DAY, (missing[-1] + 1) * DAY):
                got[r.day].append(r)
            for d, rs in got.items():
                self._days[(account_id, d)] = rs
            while len(self._days) > self.max_days:
                self._days.popitem(last=False)
        out: list[DayRow] = []
        if since < lo * DAY:
            out += await daily(s, account_id, since, lo * DAY)
        for d in range(lo, hi + 1):
            out += self._days.get((account_id, d), [])
        if (hi + 1) * DAY < until:
            out += await daily(s, account_id, (hi + 1) * DAY, until)
        return out


async def served_split(s: AsyncSession, account_id: int | None, requested: str, since: int, until: int
                       ) -> list[tuple[str, int]]:
    """Calls that requested ``requested`` (the router) per engine that served them."""
    e = UsageEntry
    q = (select(e.served_model, func.count()).where(e.requested_model == requested, e.created_at >= since,
                                                   e.created_at < until)
         .group_by(e.served_model).order_by(e.served_model))
    if account_id is not None:
        q = q.where(e.account_id == account_id)
    return [(m, int(n)) for m, n in (await s.execute(q)).all()]


async def calls(s: AsyncSession, f: CallFilter, limit: int) -> list[UsageEntry]:
    """Ledger entries matching ``f``, newest first."""
    e = UsageEntry
    q = select(e)
    if f.account_id is not None:
        q = q.where(e.account_id == f.account_id)
    if f.trace_id:
        q = q.where(e.request_id == f.trace_id)
    if f.model:
        q = q.where((e.requested_model == f.model) | (e.served_model == f.model))
    if f.status:
        q = q.where(e.status == f.status)
    if f.since is not None:
        q = q.where(e.created_at >= f.since)
    if f.until is not None:
        q = q.where(e.created_at < f.until)
    if f.before_id is not None:
        q = q.where(e.id < f.before_id)
    return list((await s.execute(q.order_by(e.id.desc()).limit(limit))).scalars())


async def account_keys(s: AsyncSession, account_id: int) -> list[ApiKey]:
    q = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id)
    return list((await s.execute(q)).scalars())


async def key_of_account(s: AsyncSession, key_id: int, account_id: int) -> ApiKey | None:
    q = select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == account_id)
    return (await s.execute(q)).scalar_one_or_none()


async def account_by_id(s: AsyncSession, account_id: int) -> Account | None:
    return (await s.execute(select(Account).where(Account.id == account_id))).scalar_one_or_none()


async def find_accounts(s: AsyncSession, text: str, limit: int) -> list[Account]:
    q = select(Account).order_by(Account.id).limit(limit)
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Account.name.like(f"%{escaped}%", escape="\\"))
    return list((await s.execute(q)).scalars())


async def account_names(s: AsyncSession, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await s.execute(select(Account.id, Account.name).where(Account.id.in_(sorted(ids))))
    return {i: n for i, n in rows.all()}

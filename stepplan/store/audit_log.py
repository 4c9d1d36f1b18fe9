"""The audit log: every administrative change (accounts, subscriptions, top-ups, keys and their
limits, rotations, admin tokens), written in the same transaction as the change itself, so a
change without its record (or a record without its change) cannot be committed.

``before`` and ``after`` are JSON views of the target; secrets never go in (the views carry key
prefixes only, and :func:`record` drops any field named like a secret as a second guard).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditRecord
from .subscriptions import current_subscription

_SECRET_FIELDS = frozenset({"key", "token", "hash", "secret", "api_key", "password"})


def _clean(view: Any) -> Any:
    if isinstance(view, dict):
        return {k: _clean(v) for k, v in view.items() if k not in _SECRET_FIELDS}
    if isinstance(view, list):
        return [_clean(v) for v in view]
    return view


async def record(s: AsyncSession, actor: str, action: str, target: str, before: Any, after: Any, now: int) -> None:
    """Add an audit record to the session's transaction (committed with the change)."""
    s.add(AuditRecord(at=now, actor=actor[:160], action=action[:64], target=target[:160],
                      before=None if before is None else json.dumps(_clean(before), sort_keys=True),
                      after=None if after is None else json.dumps(_clean(after), sort_keys=True)))


def audit_view(r: AuditRecord) -> dict[str, Any]:
    return {"id": r.id, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
            "before": json.loads(r.before) if r.before else None, "after": json.loads(r.after) if r.after else None}


async def list_audit(s: AsyncSession, since: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Audit records at or after ``since`` (billing clock), oldest first, at most ``limit``
    (the newest ``limit`` when there are more)."""
    q = select(AuditRecord)
    if since is not None:
        q = q.where(AuditRecord.at >= since)
    rows = list((await s.execute(q.order_by(AuditRecord.id.desc()).limit(limit))).scalars())
    return [audit_view(r) for r in reversed(rows)]


async def subscription_state(s: AsyncSession, account_id: int) -> dict[str, Any] | None:
    """The account's active subscription as an audit record's ``before``/``after``."""
    sub = await current_subscription(s, account_id)
    if sub is None:
        return None
    return {"subscription_id": sub.id, "plan": sub.plan, "period": sub.period, "term_end": sub.term_end,
            "auto_renew": sub.auto_renew, "pending_plan": sub.pending_plan}

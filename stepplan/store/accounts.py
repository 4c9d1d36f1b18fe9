"""Accounts and API keys: creation, listing, revocation, lookup by key hash."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .meta import bump_auth_epoch
from .meta import read_auth_epoch as read_auth_epoch  # re-exported: auth.py reads the epoch from here
from .models import Account, ApiKey
from .sql import rowcount

KEY_PREFIX = "sk-step-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What every call needs to know about its key, cached per process (stepplan.auth): the
    per-key settings are checked from here, without a database round trip."""

    key_id: int
    account_id: int
    account_name: str
    expires_at: int | None = None  # billing-clock seconds; for a rotated key, the end of its grace
    models: frozenset[str] | None = None  # the allowlist; None: every model
    rpm: int = 0  # 0: no per-key limit
    concurrency: int = 0
    credit_daily: int | None = None  # micro-credits per calendar day (UTC, billing clock)
    credit_monthly: int | None = None  # micro-credits per calendar month
    networks: tuple[Network, ...] | None = None  # the client-address allowlist; None: any address
    replaced_by: int | None = None  # set by a rotation

    @property
    def credit_limited(self) -> bool:
        return self.credit_daily is not None or self.credit_monthly is not None

    @property
    def rate_limited(self) -> bool:
        return self.rpm > 0 or self.concurrency > 0


def key_info(row: ApiKey, account_name: str) -> KeyInfo:
    """The cached view of a key row."""
    models = frozenset(json.loads(row.models)) if row.models else None
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in json.loads(row.ip_allow)) if row.ip_allow else None
    return KeyInfo(row.id, row.account_id, account_name, row.expires_at, models, row.rpm or 0,
                   row.concurrency or 0, row.credit_limit_daily, row.credit_limit_monthly, nets, row.replaced_by)


class AccountExists(Exception):
    pass


async def create_account(s: AsyncSession, name: str) -> Account:
    acct = Account(name=name, created_at=int(time.time()))
    s.add(acct)
    try:
        await s.flush()
    except IntegrityError as exc:
        raise AccountExists(f"account {name!r} already exists") from exc
    return acct


async def get_account(s: AsyncSession, name: str) -> Account | None:
    return (await s.execute(select(Account).where(Account.name == name))).scalar_one_or_none()


async def list_accounts(s: AsyncSession) -> list[Account]:
    return list((await s.execute(select(Account).order_by(Account.id))).scalars())


async def create_key(s: AsyncSession, account: Account, label: str | None = None,
                     settings: dict[str, object] | None = None) -> tuple[ApiKey, str]:
    """A new key (flushed: it has its id) and its secret, shown once. ``settings``: api_keys
    columns as :mod:`stepplan.key_settings` parsed them (lists and objects are stored as JSON)."""
    key = new_key()
    row = ApiKey(account_id=account.id, name=label, prefix=key[:14], hash=hash_key(key),
                 created_at=int(time.time()), rpm=0, concurrency=0)
    for column, value in (settings or {}).items():
        setattr(row, column, json.dumps(value) if isinstance(value, (list, dict)) else value)
    s.add(row)
    await bump_auth_epoch(s)
    await s.flush()
    return row, key


async def list_keys(s: AsyncSession, account: Account | None = None) -> list[tuple[ApiKey, str]]:
    q = select(ApiKey, Account.name).join(Account, Account.id == ApiKey.account_id).order_by(ApiKey.id)
    if account is not None:
        q = q.where(ApiKey.account_id == account.id)
    return [(k, n) for k, n in (await s.execute(q)).all()]


async def revoke_key(s: AsyncSession, key_id: int) -> bool:
    res = await s.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                          .values(revoked_at=int(time.time())))
    await bump_auth_epoch(s)
    return bool(rowcount(res))


async def lookup_key(s: AsyncSession, key_hash: str) -> KeyInfo | None:
    q = (select(ApiKey, Account.name)
         .join(Account, Account.id == ApiKey.account_id)
         .where(ApiKey.hash == key_hash, ApiKey.revoked_at.is_(None)))
    row = (await s.execute(q)).first()
    return key_info(row[0], row[1]) if row else None

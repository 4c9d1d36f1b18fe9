"""Accounts and API keys: creation, listing, revocation, lookup by key hash."""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: int
    account_id: int
    account_name: str


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


async def create_key(s: AsyncSession, account: Account, label: str | None = None) -> tuple[ApiKey, str]:
    key = new_key()
    row = ApiKey(account_id=account.id, name=label, prefix=key[:14], hash=hash_key(key),
                 created_at=int(time.time()))
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
    q = (select(ApiKey.id, ApiKey.account_id, Account.name)
         .join(Account, Account.id == ApiKey.account_id)
         .where(ApiKey.hash == key_hash, ApiKey.revoked_at.is_(None)))
    row = (await s.execute(q)).first()
    return KeyInfo(row[0], row[1], row[2]) if row else None

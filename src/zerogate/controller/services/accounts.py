"""Admin and user accounts: created pending with an activation code, changed,
disabled, reset (new code, no password or TOTP) and deleted.

Disabling, resetting or deleting an account cuts it off at once: its API
tokens are revoked and its client devices too (gateways drop their peers).
An admin cannot disable, reset or delete their own account, so a deployment
never locks its last admin out by mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.services.lookup import all_by_name, by_name, ensure_free
from zerogate.controller.state import NotFound, Unprocessable
from zerogate.pki.credentials import new_token, token_digest
from zerogate.store.db import utcnow
from zerogate.store.models import Account, ApiToken, Device, Group

Kind = Literal["admin", "user"]


@dataclass(frozen=True)
class Activation:
    """An account with a fresh activation code (shown once; only its digest is stored)."""

    account: Account
    code: str
    expires_at: datetime


async def get(session: AsyncSession, kind: Kind, username: str) -> Account:
    """The ``kind`` account named ``username``; NotFound also says when it is the other kind."""
    account = await by_name(session, Account, username, kind)
    if account.kind != kind:
        other = "an admin" if account.kind == "admin" else "a user"
        raise NotFound(f"no {kind} named {username!r} ({username} is {other})")
    return account


async def list_accounts(session: AsyncSession, kind: Kind) -> Sequence[Account]:
    rows = await session.scalars(select(Account).where(Account.kind == kind).order_by(Account.username))
    return rows.all()


def _new_activation(account: Account, ttl: timedelta) -> Activation:
    code = new_token("zga")
    account.activation_digest = token_digest(code)
    account.activation_expires_at = utcnow() + ttl
    return Activation(account, code, account.activation_expires_at)


async def _groups(session: AsyncSession, kind: str, names: list[str]) -> list[Group]:
    if kind == "admin" and names:
        raise Unprocessable("admins are not members of user groups")
    return await all_by_name(session, Group, names, "group")


async def create(session: AsyncSession, kind: Kind, body: s.AccountCreate, ttl: timedelta) -> Activation:
    """A pending account (it reaches nothing until activated) with an activation code valid for ``ttl``."""
    await ensure_free(session, Account, body.username, "account")
    groups = await _groups(session, kind, body.groups)
    now = utcnow()
    account = Account(
        kind=kind,
        username=body.username,
        display_name=body.display_name,
        email=body.email,
        status="pending",
        created_at=now,
        updated_at=now,
        groups=groups,
    )
    activation = _new_activation(account, ttl)
    session.add(account)
    await session.flush()
    return activation


async def update(session: AsyncSession, account: Account, body: s.AccountUpdate, actor_id: int) -> None:
    """Apply the given fields; disabling cuts the account off, enabling restores
    its status (pending until TOTP is confirmed)."""
    if body.display_name is not None:
        account.display_name = body.display_name
    if body.email is not None:
        account.email = body.email
    if body.groups is not None:
        account.groups = await _groups(session, account.kind, body.groups)
    if body.disabled is not None:
        if body.disabled and account.id == actor_id:
            raise Unprocessable("you cannot disable your own account")
        if body.disabled:
            account.status = "disabled"
            await cut_off(session, account)
        elif account.status == "disabled":
            account.status = "active" if account.totp_confirmed else "pending"
    account.updated_at = utcnow()


async def reset(session: AsyncSession, account: Account, actor_id: int, ttl: timedelta) -> Activation:
    """A new activation code: the account must set a new password and TOTP."""
    if account.id == actor_id:
        raise Unprocessable("you cannot reset your own account; ask another admin")
    account.password_hash = None
    account.totp_secret = None
    account.totp_confirmed = False
    account.totp_last_step = None
    account.status = "pending"
    await cut_off(session, account)
    return _new_activation(account, ttl)


async def delete(session: AsyncSession, account: Account, actor_id: int) -> None:
    if account.id == actor_id:
        raise Unprocessable("you cannot delete your own account")
    await session.delete(account)


async def cut_off(session: AsyncSession, account: Account) -> None:
    """Revoke every token and client device of an account (takes effect at once)."""
    now = utcnow()
    for token in await session.scalars(
        select(ApiToken).where(ApiToken.account_id == account.id, ApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = now
    for device in await session.scalars(
        select(Device).where(Device.account_id == account.id, Device.status == "active")
    ):
        device.status = "revoked"
        device.revoked_at = now

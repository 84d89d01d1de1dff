"""``/v1/admins`` and ``/v1/users``: accounts, plus ``POST .../{username}/reset``.

A new or reset account answers with its activation code (shown once). A
create changes no config revision: a pending account reaches nothing yet.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.auth import Admin, State
from zerogate.controller.services import accounts
from zerogate.controller.services.accounts import Activation, Kind
from zerogate.controller.state import ControllerState
from zerogate.store.models import Account

router = APIRouter(prefix="/v1", tags=["objects"])


def account_out(a: Account) -> s.AccountOut:
    return s.AccountOut(
        id=a.id,
        kind=a.kind,
        username=a.username,
        display_name=a.display_name,
        email=a.email,
        status=a.status,
        totp_enrolled=a.totp_confirmed,
        groups=sorted(g.name for g in a.groups),
        created_at=a.created_at,
    )


def _created(activation: Activation) -> s.AccountCreated:
    return s.AccountCreated(
        **account_out(activation.account).model_dump(),
        activation_code=activation.code,
        activation_expires_at=activation.expires_at,
    )


def _ttl(state: ControllerState) -> timedelta:
    return timedelta(hours=state.settings.activation_ttl_hours)


def _resource(
    kind: Kind, plural: str
) -> Resource[Account, s.AccountOut, s.AccountCreated, s.AccountCreate, s.AccountUpdate]:
    async def find(session: AsyncSession, username: str) -> Account:
        return await accounts.get(session, kind, username)

    async def list_all(session: AsyncSession) -> list[s.AccountOut]:
        return [account_out(a) for a in await accounts.list_accounts(session, kind)]

    async def show(session: AsyncSession, account: Account) -> s.AccountOut:
        return account_out(account)

    async def create(change: Change, body: s.AccountCreate) -> s.AccountCreated:
        return _created(await accounts.create(change.session, kind, body, _ttl(change.state)))

    async def update(change: Change, account: Account, body: s.AccountUpdate) -> s.AccountOut:
        await accounts.update(change.session, account, body, change.admin.id)
        return account_out(account)

    async def delete(change: Change, account: Account) -> None:
        await accounts.delete(change.session, account, change.admin.id)

    return Resource(
        kind=kind,
        path=f"/{plural}",
        tag=plural,
        noun="account",
        nouns="accounts",
        key="username",
        out=s.AccountOut,
        created=s.AccountCreated,
        create_body=s.AccountCreate,
        update_body=s.AccountUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
        create_details=lambda body: {"username": body.username},
        create_changes_config=False,
    )


def _account_routes(kind: Kind, plural: str) -> None:
    resource = _resource(kind, plural)
    crud_routes(router, resource)

    async def reset_account(username: str, admin: Admin, state: State) -> s.AccountCreated:
        """New activation code: the account must set a new password and TOTP."""
        async with state.mutation(admin, f"reset-{kind}", kind) as m:
            account = await resource.find(m.tx.session, username)
            m.object_id = account.id
            return _created(await accounts.reset(m.tx.session, account, admin.id, _ttl(state)))

    router.add_api_route(
        f"/{plural}/{{username}}/reset",
        reset_account,
        methods=["POST"],
        response_model=s.AccountCreated,
        tags=[plural],
    )


_account_routes("admin", "admins")
_account_routes("user", "users")

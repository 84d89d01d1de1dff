"""Named API tokens for automation, and revocation of any of one's tokens."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from sqlalchemy import select

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, AnyAccount, State
from zerogate.controller.ids import get_row, shown_id
from zerogate.controller.state import NotFound, Unprocessable
from zerogate.pki.credentials import new_token, token_digest, token_hint
from zerogate.store.db import utcnow
from zerogate.store.models import ApiToken

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


def token_out(t: ApiToken) -> s.TokenOut:
    return s.TokenOut(
        id=t.id,
        name=t.name,
        kind=t.kind,
        hint=t.hint,
        username=t.account.username,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
        created_at=t.created_at,
    )


@router.get("", response_model=list[s.TokenOut])
async def list_tokens(who: AnyAccount, state: State) -> list[s.TokenOut]:
    """Your own tokens (an admin sees everyone's)."""
    async with state.db.read() as session:
        q = select(ApiToken).order_by(ApiToken.id)
        if who.kind != "admin":
            q = q.where(ApiToken.account_id == who.id)
        return [token_out(t) for t in await session.scalars(q)]


@router.post("", response_model=s.TokenCreated, status_code=201)
async def create_token(body: s.TokenCreate, admin: Admin, state: State) -> s.TokenCreated:
    """An API token for scripts, acting as you. Shown once; stored only as a hash."""
    if body.ttl_days > state.settings.api_token_max_days:
        raise Unprocessable(f"ttl_days: at most {state.settings.api_token_max_days} (api_token_max_days)")
    token = new_token("zgt")
    async with state.mutation(admin, "create-token", "token") as m:
        now = utcnow()
        row = ApiToken(
            digest=token_digest(token),
            hint=token_hint(token),
            name=body.name,
            kind=body.kind,
            account_id=admin.id,
            mfa=False,
            expires_at=now + timedelta(days=body.ttl_days),
            created_at=now,
        )
        m.tx.session.add(row)
        await m.tx.session.flush()
        await m.tx.session.refresh(row, ["account"])
        m.object_id, m.details, m.config_change = (
            row.id,
            {"name": body.name, "kind": body.kind, "hint": row.hint},
            False,
        )
        return s.TokenCreated(**token_out(row).model_dump(), token=token)


@router.delete("/{token_id}", status_code=204)
async def revoke_token(token_id: int, who: AnyAccount, state: State) -> None:
    async with state.mutation(who, "revoke-token", "token", shown_id(token_id)) as m:
        row = await get_row(m.tx.session, ApiToken, token_id)
        if row is None or (who.kind != "admin" and row.account_id != who.id):
            raise NotFound(f"no token with id {shown_id(token_id)}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        m.config_change = False

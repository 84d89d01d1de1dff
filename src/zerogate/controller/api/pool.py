"""``/v1/address-pool``: the client address pool (show, replace its blocks)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.services import address_pool
from zerogate.store.models import AddressPoolRow

router = APIRouter(prefix="/v1", tags=["objects"])


async def _pool_out(session: AsyncSession, pool: AddressPoolRow) -> s.AddressPoolOut:
    return s.AddressPoolOut(
        name=pool.name, blocks=pool.blocks, allocated=await address_pool.allocated(session)
    )


@router.get("/address-pool", response_model=s.AddressPoolOut, tags=["address-pool"])
async def show_pool(admin: Admin, state: State) -> s.AddressPoolOut:
    async with state.db.read() as session:
        return await _pool_out(session, await address_pool.default_pool(session))


@router.put("/address-pool", response_model=s.AddressPoolOut, tags=["address-pool"])
async def update_pool(body: s.AddressPoolUpdate, admin: Admin, state: State) -> s.AddressPoolOut:
    async with state.mutation(admin, "update-address-pool", "address-pool") as m:
        session = m.tx.session
        pool = await address_pool.default_pool(session)
        await address_pool.set_blocks(session, pool, body.blocks)
        m.object_id, m.details = pool.id, {"blocks": body.blocks}
        return await _pool_out(session, pool)

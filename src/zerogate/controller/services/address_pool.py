"""The client address pool: the blocks client devices (and connectors) get
their virtual addresses from.

New blocks must not overlap any connector group's subnets (clients would get
addresses of a site), and every address already handed out must stay inside
them (revoke those devices first). A new device gets the first free address
outside the networks it must avoid (its own local networks).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.fields import overlapping
from zerogate.controller.state import Conflict, NotFound
from zerogate.policy.pool import AddressPool, PoolError
from zerogate.store.models import AddressPoolRow, ConnectorGroup, Device


async def default_pool(session: AsyncSession) -> AddressPoolRow:
    pool = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    if pool is None:
        raise NotFound("the default client address pool is missing; run 'zerogate controller init'")
    return pool


async def allocate_address(
    session: AsyncSession, avoid: list[IPv4Network | IPv6Network]
) -> tuple[AddressPool, IPv4Address]:
    """A free tunnel address from the default pool, outside the ``avoid`` networks.

    Conflict when the pool has none left (or none outside ``avoid``).
    """
    pool_row = await default_pool(session)
    pool = AddressPool(blocks=tuple(ip_network(b) for b in pool_row.blocks))  # type: ignore[misc]
    taken = {
        IPv4Address(a)
        for a in await session.scalars(select(Device.address).where(Device.address.is_not(None)))
    }
    try:
        return pool, pool.allocate(taken, avoid=avoid)
    except PoolError as exc:
        raise Conflict(str(exc)) from None


async def allocated(session: AsyncSession) -> int:
    """How many devices hold an address."""
    count = await session.scalar(select(func.count()).select_from(Device).where(Device.address.is_not(None)))
    return int(count or 0)


async def set_blocks(session: AsyncSession, pool: AddressPoolRow, blocks: list[str]) -> None:
    """Replace the pool's blocks; Conflict when they overlap a site or strand an address."""
    nets = [ip_network(b) for b in blocks]
    for group in await session.scalars(select(ConnectorGroup).order_by(ConnectorGroup.name)):
        for subnet in group.subnets:
            for block in blocks:
                if overlapping(block, subnet):
                    raise Conflict(
                        f"block {block} overlaps subnet {subnet} of connector group {group.name!r}: "
                        "clients would get addresses of that site; choose blocks outside every "
                        "connector group's subnets"
                    )
    stranded = [
        d
        for d in await session.scalars(select(Device.address).where(Device.address.is_not(None)))
        if d is not None and not any(ip_address(d) in n for n in nets)
    ]
    if stranded:
        raise Conflict(
            f"{len(stranded)} device(s) (clients or connectors) hold addresses outside the new blocks "
            f"(e.g. {stranded[0]}); revoke them first"
        )
    pool.blocks = blocks

"""Connector groups: the sites, each fronting some subnets through its connectors.

Rules: no two groups front overlapping subnets (routing would be ambiguous),
no fronted subnet overlaps the client address pool (clients' own addresses
would be routed to a site), every application's destinations stay inside its
group's subnets, and a group still used by connectors or applications cannot
be deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_network
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.fields import overlapping
from zerogate.controller.services.lookup import ensure_free
from zerogate.controller.services.merge import merged
from zerogate.controller.state import Conflict, Unprocessable
from zerogate.store.db import utcnow
from zerogate.store.models import AddressPoolRow, Application, Connector, ConnectorGroup


async def list_groups(session: AsyncSession) -> Sequence[ConnectorGroup]:
    return (await session.scalars(select(ConnectorGroup).order_by(ConnectorGroup.name))).all()


async def connector_names(session: AsyncSession, group: ConnectorGroup) -> list[str]:
    """The group's connectors, by name."""
    names = await session.scalars(
        select(Connector.name).where(Connector.connector_group_id == group.id).order_by(Connector.name)
    )
    return list(names)


async def check_subnets_free(session: AsyncSession, subnets: list[str], own_id: int | None) -> None:
    """Conflict when one of ``subnets`` overlaps a client address block or
    another group's subnet (``own_id``: the group being changed, if any)."""
    pool = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    for block in pool.blocks if pool is not None else ():
        for mine in subnets:
            if overlapping(mine, block):
                raise Conflict(
                    f"subnet {mine} overlaps client address block {block}, from which clients get their "
                    "addresses; front another subnet or move the pool (PUT /v1/address-pool)"
                )
    for other in await session.scalars(select(ConnectorGroup)):
        if other.id == own_id:
            continue
        for mine in subnets:
            for theirs in other.subnets:
                if overlapping(mine, theirs):
                    raise Conflict(f"subnet {mine} overlaps {theirs} of connector group {other.name!r}")


def check_destinations_inside(app: str, destinations: list[dict[str, Any]], group: ConnectorGroup) -> None:
    """Unprocessable when a destination of application ``app`` is outside the group's subnets."""
    subnets = [ip_network(n) for n in group.subnets]
    for d in destinations:
        net = ip_network(d["address"])
        if not any(net.version == sn.version and net.subnet_of(sn) for sn in subnets):  # type: ignore[arg-type]
            raise Unprocessable(
                f"application {app!r}: destination {net} is outside the subnets of connector group "
                f"{group.name!r} ({', '.join(group.subnets)})"
            )


async def check_apps_inside(session: AsyncSession, group: ConnectorGroup) -> None:
    """Every application of the group still fits its (changed) subnets."""
    for app in await session.scalars(select(Application).where(Application.connector_group_id == group.id)):
        check_destinations_inside(app.name, app.destinations, group)


async def create(session: AsyncSession, body: s.ConnectorGroupCreate) -> ConnectorGroup:
    await ensure_free(session, ConnectorGroup, body.name, "connector group")
    await check_subnets_free(session, body.subnets, None)
    group = ConnectorGroup(
        name=body.name,
        description=body.description,
        subnets=body.subnets,
        snat=body.snat,
        vrrp_virtual_ip=body.vrrp_virtual_ip,
        created_at=utcnow(),
    )
    session.add(group)
    await session.flush()
    return group


async def update(session: AsyncSession, group: ConnectorGroup, body: s.ConnectorGroupUpdate) -> None:
    """Apply the given fields (``vrrp_virtual_ip: ""`` removes the virtual IP),
    checked as a whole, against the other groups and the group's applications."""
    whole = merged(
        s.ConnectorGroupBody,
        "connector-group",
        description=group.description if body.description is None else body.description,
        subnets=group.subnets if body.subnets is None else body.subnets,
        snat=group.snat if body.snat is None else body.snat,
        vrrp_virtual_ip=group.vrrp_virtual_ip
        if body.vrrp_virtual_ip is None
        else body.vrrp_virtual_ip or None,
    )
    await check_subnets_free(session, whole.subnets, group.id)
    group.description, group.subnets = whole.description, whole.subnets
    group.snat, group.vrrp_virtual_ip = whole.snat, whole.vrrp_virtual_ip
    await check_apps_inside(session, group)


async def delete(session: AsyncSession, group: ConnectorGroup) -> None:
    """Conflict while connectors or applications use the group."""
    connectors = list(
        await session.scalars(select(Connector.name).where(Connector.connector_group_id == group.id))
    )
    apps = list(
        await session.scalars(select(Application.name).where(Application.connector_group_id == group.id))
    )
    if connectors or apps:
        uses = [f"connectors: {', '.join(connectors)}"] if connectors else []
        uses += [f"applications: {', '.join(apps)}"] if apps else []
        raise Conflict(f"connector group {group.name!r} is still used by " + "; ".join(uses))
    await session.delete(group)

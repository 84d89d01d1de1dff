"""Connector groups: the sites, each fronting some subnets through its connectors.

Rules: no two groups front overlapping subnets (routing would be ambiguous),
no fronted subnet overlaps the client address pool (clients' own addresses
would be routed to a site), every application's destinations stay inside its
group's subnets, and a group still used by connectors or applications cannot
be deleted.

Mode ``active-active``: every connector of the group holds a slot (1..255,
unique in the deployment): the high byte of the gateway's conntrack mark for
its flows, and its own gateway port, ``port_first + 1 + slot`` (``port_first``
is the main interface, ``port_first + 1`` the reachability probes). Slots are
given when the group becomes active-active and to connectors enrolled into it
(:func:`zerogate.controller.services.connectors.slot_for_new`), and taken back
when it goes back to standby.
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
from zerogate.store.models import AddressPoolRow, Application, Connector, ConnectorGroup, Gateway

ACTIVE_ACTIVE = "active-active"
MAX_SLOT = 255  # the slot is one byte of the gateway's conntrack mark


def slot_port(port_first: int, slot: int) -> int:
    """The gateway port a connector with ``slot`` dials (its own interface there)."""
    return port_first + 1 + slot


async def assign_slots(session: AsyncSession, group: ConnectorGroup) -> None:
    """Give each connector of ``group`` without a slot the lowest free one; Unprocessable
    when there is none, or when a gateway's port range has no port for it."""
    used = set(await session.scalars(select(Connector.slot).where(Connector.slot.is_not(None))))
    members = await session.scalars(
        select(Connector).where(Connector.connector_group_id == group.id).order_by(Connector.name)
    )
    gateways = list(await session.scalars(select(Gateway)))
    for c in members:
        if c.slot is not None:
            continue
        free = next((n for n in range(1, MAX_SLOT + 1) if n not in used), None)
        if free is None:
            raise Unprocessable(
                f"no free active-active slot for connector {c.name!r}: at most {MAX_SLOT} connectors "
                "in active-active groups"
            )
        for g in gateways:
            if slot_port(g.port_first, free) > g.port_last:
                raise Unprocessable(
                    f"gateway {g.name!r}: its port range {g.port_first}-{g.port_last} has no port for "
                    f"active-active slot {free} (needs {slot_port(g.port_first, free)}); widen it"
                )
        c.slot = free
        used.add(free)


async def clear_slots(session: AsyncSession, group: ConnectorGroup) -> None:
    for c in await session.scalars(select(Connector).where(Connector.connector_group_id == group.id)):
        c.slot = None


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
        mode=body.mode,
        created_at=utcnow(),
    )
    session.add(group)
    await session.flush()
    return group


async def update(session: AsyncSession, group: ConnectorGroup, body: s.ConnectorGroupUpdate) -> None:
    """Apply the given fields (``vrrp_virtual_ip: ""`` removes the virtual IP),
    checked as a whole, against the other groups and the group's applications;
    a change of mode gives or takes the connectors' slots."""
    whole = merged(
        s.ConnectorGroupBody,
        "connector-group",
        description=group.description if body.description is None else body.description,
        subnets=group.subnets if body.subnets is None else body.subnets,
        snat=group.snat if body.snat is None else body.snat,
        vrrp_virtual_ip=group.vrrp_virtual_ip
        if body.vrrp_virtual_ip is None
        else body.vrrp_virtual_ip or None,
        mode=group.mode if body.mode is None else body.mode,
    )
    await check_subnets_free(session, whole.subnets, group.id)
    group.description, group.subnets = whole.description, whole.subnets
    group.snat, group.vrrp_virtual_ip = whole.snat, whole.vrrp_virtual_ip
    await check_apps_inside(session, group)
    if whole.mode == ACTIVE_ACTIVE:
        await assign_slots(session, group)
    elif group.mode == ACTIVE_ACTIVE:
        await clear_slots(session, group)
    group.mode = whole.mode


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

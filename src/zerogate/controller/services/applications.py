"""Applications: named destinations (prefix, protocol, ports) behind one connector group.

Every destination must lie inside the subnets of the application's connector
group (the connectors can reach nothing else). An application a policy still
names cannot be deleted.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.services.connector_groups import check_destinations_inside
from zerogate.controller.services.lookup import by_name, ensure_free
from zerogate.controller.state import Conflict
from zerogate.store.db import utcnow
from zerogate.store.models import Application, ConnectorGroup, Policy


async def list_applications(session: AsyncSession) -> list[tuple[Application, str]]:
    """Every application with its connector group's name."""
    groups = {g.id: g.name for g in await session.scalars(select(ConnectorGroup))}
    rows = await session.scalars(select(Application).order_by(Application.name))
    return [(a, groups.get(a.connector_group_id, "")) for a in rows]


async def group_name(session: AsyncSession, app: Application) -> str:
    group = await session.get(ConnectorGroup, app.connector_group_id)
    return group.name if group else ""


async def create(session: AsyncSession, body: s.ApplicationCreate) -> tuple[Application, ConnectorGroup]:
    """The new application and its connector group."""
    await ensure_free(session, Application, body.name, "application")
    group = await by_name(session, ConnectorGroup, body.connector_group, "connector group")
    destinations = [d.model_dump() for d in body.destinations]
    check_destinations_inside(body.name, destinations, group)
    app = Application(
        name=body.name,
        description=body.description,
        connector_group_id=group.id,
        destinations=destinations,
        created_at=utcnow(),
    )
    session.add(app)
    await session.flush()
    return app, group


async def update(session: AsyncSession, app: Application, body: s.ApplicationUpdate) -> ConnectorGroup:
    """Apply the given fields; returns the (possibly new) connector group, whose
    subnets the destinations must fit."""
    if body.description is not None:
        app.description = body.description
    group = (
        await by_name(session, ConnectorGroup, body.connector_group, "connector group")
        if body.connector_group is not None
        else await session.get(ConnectorGroup, app.connector_group_id)
    )
    assert group is not None  # the foreign key keeps it
    destinations = (
        app.destinations if body.destinations is None else [d.model_dump() for d in body.destinations]
    )
    check_destinations_inside(app.name, destinations, group)
    app.connector_group_id, app.destinations = group.id, destinations
    return group


async def delete(session: AsyncSession, app: Application) -> None:
    """Conflict while a policy names the application."""
    used = [p.name for p in await session.scalars(select(Policy).where(Policy.applications.contains(app)))]
    if used:
        raise Conflict(f"application {app.name!r} is used by policies: {', '.join(used)}")
    await session.delete(app)

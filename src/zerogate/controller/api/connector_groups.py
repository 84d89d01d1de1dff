"""``/v1/connector-groups``: the sites and the subnets their connectors front.

(A group's provisioning keys: ``provisioning_keys``.)
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.services import connector_groups
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import ConnectorGroup

router = APIRouter(prefix="/v1", tags=["objects"])


async def find(session: AsyncSession, name: str) -> ConnectorGroup:
    return await by_name(session, ConnectorGroup, name, "connector group")


async def show(session: AsyncSession, g: ConnectorGroup) -> s.ConnectorGroupOut:
    return s.ConnectorGroupOut(
        id=g.id,
        name=g.name,
        description=g.description,
        subnets=g.subnets,
        snat=g.snat,
        vrrp_virtual_ip=g.vrrp_virtual_ip,
        mode=g.mode,
        connectors=await connector_groups.connector_names(session, g),
        created_at=g.created_at,
    )


async def list_all(session: AsyncSession) -> list[s.ConnectorGroupOut]:
    return [await show(session, g) for g in await connector_groups.list_groups(session)]


async def create(change: Change, body: s.ConnectorGroupCreate) -> s.ConnectorGroupOut:
    return await show(change.session, await connector_groups.create(change.session, body))


async def update(change: Change, group: ConnectorGroup, body: s.ConnectorGroupUpdate) -> s.ConnectorGroupOut:
    await connector_groups.update(change.session, group, body)
    return await show(change.session, group)


async def delete(change: Change, group: ConnectorGroup) -> None:
    await connector_groups.delete(change.session, group)


crud_routes(
    router,
    Resource(
        kind="connector-group",
        path="/connector-groups",
        tag="connector-groups",
        noun="connector_group",
        nouns="connector_groups",
        key="name",
        out=s.ConnectorGroupOut,
        created=s.ConnectorGroupOut,
        create_body=s.ConnectorGroupCreate,
        update_body=s.ConnectorGroupUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
    ),
)

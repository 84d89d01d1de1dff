"""``/v1/segment-servers``: the segment servers (their provisioning keys: ``provisioning_keys``)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.schemas import segment as ss
from zerogate.controller.services import segment
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import SegmentServer

router = APIRouter(prefix="/v1", tags=["objects"])


async def server_out(session: AsyncSession, server: SegmentServer) -> ss.SegmentServerOut:
    return ss.SegmentServerOut(
        id=server.id,
        name=server.name,
        description=server.description,
        device_id=server.device_id,
        status=server.device.status if server.device else "not enrolled",
        last_seen_at=server.device.last_seen_at if server.device else None,
        assets=await segment.asset_count(session, server),
        created_at=server.created_at,
    )


async def find(session: AsyncSession, name: str) -> SegmentServer:
    return await by_name(session, SegmentServer, name, "segment server")


async def list_all(session: AsyncSession) -> list[ss.SegmentServerOut]:
    return [await server_out(session, s) for s in await segment.list_servers(session)]


async def show(session: AsyncSession, server: SegmentServer) -> ss.SegmentServerOut:
    return await server_out(session, server)


async def create(change: Change, body: ss.SegmentServerCreate) -> ss.SegmentServerOut:
    return await server_out(change.session, await segment.create_server(change.session, body))


async def update(change: Change, server: SegmentServer, body: ss.SegmentServerUpdate) -> ss.SegmentServerOut:
    if body.description is not None:
        server.description = body.description
    return await server_out(change.session, server)


async def delete(change: Change, server: SegmentServer) -> None:
    await segment.delete_server(change.session, server)


crud_routes(
    router,
    Resource(
        kind="segment-server",
        path="/segment-servers",
        tag="segment",
        noun="segment_server",
        nouns="segment_servers",
        key="name",
        out=ss.SegmentServerOut,
        created=ss.SegmentServerOut,
        create_body=ss.SegmentServerCreate,
        update_body=ss.SegmentServerUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
        create_changes_config=False,  # reaches nothing until its host enrolls
        update_changes_config=False,
    ),
)

"""``/v1/gateways``: the public edges.

(A gateway's provisioning keys: ``provisioning_keys``.)
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.services import gateways
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import Gateway

router = APIRouter(prefix="/v1", tags=["objects"])


def gateway_out(g: Gateway) -> s.GatewayOut:
    return s.GatewayOut(
        id=g.id,
        name=g.name,
        description=g.description,
        public_endpoint=g.public_endpoint,
        port_first=g.port_first,
        port_last=g.port_last,
        device_id=g.device_id,
        status=g.device.status if g.device else "not enrolled",
        last_seen_at=g.device.last_seen_at if g.device else None,
        created_at=g.created_at,
    )


async def find(session: AsyncSession, name: str) -> Gateway:
    return await by_name(session, Gateway, name, "gateway")


async def list_all(session: AsyncSession) -> list[s.GatewayOut]:
    return [gateway_out(g) for g in await gateways.list_gateways(session)]


async def show(session: AsyncSession, gateway: Gateway) -> s.GatewayOut:
    return gateway_out(gateway)


async def create(change: Change, body: s.GatewayCreate) -> s.GatewayOut:
    return gateway_out(await gateways.create(change.session, body))


async def update(change: Change, gateway: Gateway, body: s.GatewayUpdate) -> s.GatewayOut:
    await gateways.update(change.session, gateway, body)
    return gateway_out(gateway)


async def delete(change: Change, gateway: Gateway) -> None:
    await gateways.delete(change.session, gateway)


crud_routes(
    router,
    Resource(
        kind="gateway",
        path="/gateways",
        tag="gateways",
        noun="gateway",
        nouns="gateways",
        key="name",
        out=s.GatewayOut,
        created=s.GatewayOut,
        create_body=s.GatewayCreate,
        update_body=s.GatewayUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
    ),
)

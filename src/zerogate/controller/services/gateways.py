"""Gateways: the public edges clients and connectors reach over WireGuard.

A gateway is declared here (name, public endpoint, UDP port range) and
enrolled later by its own provisioning key. Deleting it revokes its enrolled
device, so the credential stops working at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.services.lookup import ensure_free
from zerogate.controller.services.merge import merged
from zerogate.controller.state import Unprocessable
from zerogate.store.db import utcnow
from zerogate.store.models import Connector, Gateway


async def list_gateways(session: AsyncSession) -> Sequence[Gateway]:
    return (await session.scalars(select(Gateway).order_by(Gateway.name))).all()


async def create(session: AsyncSession, body: s.GatewayCreate) -> Gateway:
    await ensure_free(session, Gateway, body.name, "gateway")
    gateway = Gateway(**body.model_dump(), created_at=utcnow())
    session.add(gateway)
    await session.flush()
    return gateway


async def update(session: AsyncSession, gateway: Gateway, body: s.GatewayUpdate) -> None:
    """Apply the given fields; the port range is checked as a whole."""
    whole = merged(
        s.GatewayCreate,
        "gateway",
        name=gateway.name,
        description=gateway.description if body.description is None else body.description,
        public_endpoint=gateway.public_endpoint if body.public_endpoint is None else body.public_endpoint,
        port_first=gateway.port_first if body.port_first is None else body.port_first,
        port_last=gateway.port_last if body.port_last is None else body.port_last,
    )
    # Active-active connectors dial port_first + 1 + their slot (gateway/spread.py).
    top = await session.scalar(select(func.max(Connector.slot)))
    if top is not None and whole.port_first + 1 + top > whole.port_last:
        raise Unprocessable(
            f"port range {whole.port_first}-{whole.port_last} leaves no port for active-active "
            f"connector slot {top} (it needs {whole.port_first + 1 + top}); widen the range"
        )
    gateway.description, gateway.public_endpoint = whole.description, whole.public_endpoint
    gateway.port_first, gateway.port_last = whole.port_first, whole.port_last


async def delete(session: AsyncSession, gateway: Gateway) -> None:
    """Remove the gateway and revoke its enrolled device, if any."""
    if gateway.device is not None:
        gateway.device.status, gateway.device.revoked_at = "revoked", utcnow()
    await session.delete(gateway)

"""Config snapshots: exactly what one device's role needs, at one revision.

A gateway gets its own settings, every active connector, the client devices
policy lets in and the policy itself, cut the way it renders it; a connector
gets its group (subnets, SNAT, VRRP) and the gateways to dial; a client gets
its address, the gateways, and the routes and applications its user's
policies allow (a connector of an active-active group dials each gateway on
its own port, :func:`~.connector_groups.slot_port`); a segment server gets the assets it manages
(:func:`~.segment.build_segment_snapshot`). No snapshot holds anyone else's secrets. The typed shapes are
:mod:`zerogate.model.snapshot`'s.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_network
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.services.connector_groups import ACTIVE_ACTIVE, slot_port
from zerogate.controller.services.segment import build_segment_snapshot
from zerogate.controller.state import NotFound
from zerogate.model.snapshot import (
    ClientPeer,
    ClientSnapshot,
    ConnectorEntry,
    ConnectorGroupConfig,
    ConnectorSnapshot,
    GatewayConfig,
    GatewayEntry,
    GatewaySnapshot,
    Snapshot,
)
from zerogate.policy.pool import gateway_address
from zerogate.store.models import AddressPoolRow, Connector, ConnectorGroup, Device, Gateway


async def build_snapshot(
    session: AsyncSession, device: Device, revision: int, policies: PolicyCache
) -> Snapshot:
    """Exactly what this device needs, nothing about anyone else's secrets."""
    if device.role == "segment":
        return await build_segment_snapshot(session, device, revision)
    pool_row = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    blocks = tuple(pool_row.blocks) if pool_row else ()
    tunnel = tuple(str(gateway_address(ip_network(b))) for b in blocks)  # type: ignore[arg-type]
    gateways = tuple(
        GatewayEntry(
            name=g.name,
            endpoint=g.public_endpoint,
            port=g.port_first,
            port_first=g.port_first,
            port_last=g.port_last,
            wg_public_key=g.device.wg_public_key,
            tunnel_address=tunnel[0] if tunnel else None,
        )
        for g in await session.scalars(select(Gateway).order_by(Gateway.name))
        if g.device is not None and g.device.status == "active"
    )
    groups = {g.id: g for g in await session.scalars(select(ConnectorGroup))}
    base: dict[str, Any] = {"revision": revision, "device_id": device.id, "name": device.name}

    def spread_slot(c: Connector) -> int | None:
        return c.slot if groups[c.connector_group_id].mode == ACTIVE_ACTIVE else None

    if device.role == "gateway":
        view = await policies.get(session, revision)
        gw = await session.scalar(select(Gateway).where(Gateway.device_id == device.id))
        connectors = tuple(
            ConnectorEntry(
                name=c.name,
                device_id=c.device_id,
                wg_public_key=c.device.wg_public_key,
                address=c.device.address,
                connector_group=groups[c.connector_group_id].name,
                subnets=tuple(groups[c.connector_group_id].subnets),
                slot=slot if gw is not None else None,
                listen_port=slot_port(gw.port_first, slot) if gw is not None and slot else None,
                draining=c.draining,
            )
            for c in await session.scalars(select(Connector).order_by(Connector.name))
            if c.device.status == "active"
            for slot in [spread_slot(c)]
        )
        client_devices = {d.device_id: d for d in view.inputs.devices}
        clients = tuple(
            ClientPeer(
                device_id=d.id,
                wg_public_key=d.wg_public_key,
                address=d.address,
                session_expires_at=d.session_expires_at,
            )
            for d in await session.scalars(select(Device).where(Device.role == "client").order_by(Device.id))
            if d.id in client_devices
        )
        return GatewaySnapshot(
            **base,
            gateway=GatewayConfig(
                name=gw.name,
                public_endpoint=gw.public_endpoint,
                port_first=gw.port_first,
                port_last=gw.port_last,
            )
            if gw
            else None,
            tunnel_addresses=tunnel,
            client_blocks=blocks,
            connectors=connectors,
            clients=clients,
            policy=view.gateway_policy(),
        )
    if device.role == "connector":
        c = await session.scalar(select(Connector).where(Connector.device_id == device.id))
        if c is None:
            raise NotFound("this connector was removed")
        g = groups[c.connector_group_id]
        if (slot := spread_slot(c)) is not None:  # its own port on each gateway
            gateways = tuple(
                gw_entry.model_copy(update={"port": slot_port(gw_entry.port_first, slot)})
                for gw_entry in gateways
                if gw_entry.port_first is not None
            )
        return ConnectorSnapshot(
            **base,
            address=device.address,
            connector_group=ConnectorGroupConfig(
                name=g.name, subnets=tuple(g.subnets), snat=g.snat, vrrp_virtual_ip=g.vrrp_virtual_ip
            ),
            client_blocks=blocks,
            gateways=gateways,
        )
    # client: its address and the destinations its user's policies allow
    view = await policies.get(session, revision)
    rules = view.compiled.rules_for_source(IPv4Address(device.address)) if device.address else ()
    return ClientSnapshot(
        **base,
        address=device.address,
        session_expires_at=device.session_expires_at,
        gateways=gateways,
        routes=tuple(sorted({str(r.destination) for r in rules})),
        applications=tuple(sorted({n for r in rules for n in view.apps_by_policy.get(r.policy_id, [])})),
    )

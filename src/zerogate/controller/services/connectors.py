"""Connectors: the enrolled hosts that front a connector group's subnets.

A connector is created by enrollment (see :mod:`.enrollment`); here it is
listed, described (location, bandwidth class, owner) and deleted, which
revokes its device. Its tunnel state comes from its latest stored report:
"up", "down" or "unknown" (no report, an unreadable one, or none recent),
with the last handshake and, when it is not up, a hint of what to check.

``draining`` is the one field of an update that devices are told (the
gateways stop sending new flows to the connector); the others only describe.
A connector enrolled into an active-active group gets its slot on insert
(:func:`slot_for_new`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, TypedDict

from sqlalchemy import Connection, Text, cast, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper

from zerogate.controller import schemas as s
from zerogate.controller.reports import StoredReport, read_stored
from zerogate.store.db import utcnow
from zerogate.store.models import Connector, ConnectorGroup, Device

# Connectors report every 5 s: a report older than this says nothing about the tunnel now.
REPORT_FRESH_FOR = timedelta(seconds=30)
_CHECK_DAEMON = "check that 'zerogate connector run' is running on it and reaches the controller"
_CHECK_UDP = (
    "no WireGuard handshake with the gateway: check that UDP to the gateway's port range gets through"
)


class ConnectorTunnel(TypedDict):
    tunnel: Literal["up", "down", "unknown"]
    last_handshake_at: datetime | None
    tunnel_hint: str | None


def connector_tunnel(raw_report: str | None, now: datetime) -> ConnectorTunnel:
    """The tunnel as the connector's latest report (raw column text) tells it.

    The report passed the bounded schema in reports.py (hint: no control
    characters, at most MAX_HINT; handshake time: strict ISO 8601 UTC), and is
    parsed again here, so a report written around the API is never shown raw.
    """
    stored, problem = read_stored(raw_report)
    if stored is None:
        why = "its last report is unreadable" if problem else "it has not reported yet"
        return {"tunnel": "unknown", "last_handshake_at": None, "tunnel_hint": f"{why}: {_CHECK_DAEMON}"}
    handshake = _last_handshake(stored)
    at = stored.at if stored.at.tzinfo else stored.at.replace(tzinfo=UTC)  # written around the API
    age = now - at
    if age > REPORT_FRESH_FOR:
        hint = f"no report for {age.total_seconds():.0f} s: {_CHECK_DAEMON}"
        return {"tunnel": "unknown", "last_handshake_at": handshake, "tunnel_hint": hint}
    up = stored.details.tunnel_up
    if up is None:
        return {"tunnel": "unknown", "last_handshake_at": handshake, "tunnel_hint": None}
    if up:
        return {"tunnel": "up", "last_handshake_at": handshake, "tunnel_hint": None}
    return {
        "tunnel": "down",
        "last_handshake_at": handshake,
        "tunnel_hint": stored.details.tunnel_hint or _CHECK_UDP,
    }


async def connector_reports(session: AsyncSession, device_id: int | None = None) -> dict[int, str | None]:
    """Connector devices' stored reports as raw text (parsed by :func:`connector_tunnel`)."""
    query = select(Device.id, cast(Device.report, Text)).where(Device.role == "connector")
    if device_id is not None:
        query = query.where(Device.id == device_id)
    return {i: raw for i, raw in (await session.execute(query)).tuples()}


async def list_connectors(session: AsyncSession) -> Sequence[Connector]:
    return (await session.scalars(select(Connector).order_by(Connector.name))).all()


async def group_names(session: AsyncSession) -> dict[int, str]:
    """Connector group id -> name."""
    return {g.id: g.name for g in await session.scalars(select(ConnectorGroup))}


def update(connector: Connector, body: s.ConnectorUpdate) -> bool:
    """Apply the fields given; True when devices must be told (``draining`` changed)."""
    told = body.draining is not None and body.draining != connector.draining
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(connector, field, value)
    return told


@event.listens_for(Connector, "before_insert")
def slot_for_new(_mapper: Mapper[Connector], connection: Connection, target: Connector) -> None:
    """A connector enrolled into an active-active group takes the lowest free slot
    (none left: it gets none and serves as if its group were standby; the group
    update that made it active-active checked the room)."""
    if target.slot is not None:
        return
    mode = connection.scalar(
        select(ConnectorGroup.mode).where(ConnectorGroup.id == target.connector_group_id)
    )
    if mode != "active-active":
        return
    used = set(connection.scalars(select(Connector.slot).where(Connector.slot.is_not(None))))
    target.slot = next((n for n in range(1, 256) if n not in used), None)


async def delete(session: AsyncSession, connector: Connector) -> None:
    """Revoke the connector's device and remove the connector."""
    connector.device.status, connector.device.revoked_at = "revoked", utcnow()
    await session.delete(connector)


def _last_handshake(report: StoredReport) -> datetime | None:
    """The connector's own last_handshake_at, else (older connectors) its gateway peer's."""
    if report.details.last_handshake_at is not None:
        return datetime.fromisoformat(report.details.last_handshake_at)
    latest = max((p.latest_handshake for p in report.peers if p.role == "gateway"), default=0)
    return datetime.fromtimestamp(latest, UTC) if 0 < latest < 2**40 else None

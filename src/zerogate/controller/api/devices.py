"""``GET /v1/devices`` and ``POST /v1/devices/{device_id}/revoke``: every
enrolled gateway, connector and client, with its latest report; ``GET /v1/status``:
which of them are online and what needs attention (:mod:`zerogate.controller.health`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.health import component_health
from zerogate.controller.ids import shown_id
from zerogate.controller.reports import read_stored
from zerogate.controller.services import devices
from zerogate.store.db import utcnow
from zerogate.store.models import Device

router = APIRouter(prefix="/v1", tags=["devices"])


def _device_out(d: Device, owners: dict[int, str], raw_report: str | None) -> s.DeviceOut:
    stored, problem = read_stored(raw_report)
    health = (
        component_health(d.role, d.last_seen_at, stored, problem, utcnow()) if d.status == "active" else None
    )
    return s.DeviceOut(
        id=d.id,
        role=d.role,
        name=d.name,
        status=d.status,
        owner=owners.get(d.account_id) if d.account_id else None,
        address=d.address,
        wg_public_key=d.wg_public_key,
        cert_serial=d.cert_serial,
        created_at=d.created_at,
        revoked_at=d.revoked_at,
        last_seen_at=d.last_seen_at,
        report=stored,
        report_problem=problem,
        online=health.online if health else None,
    )


@router.get("/devices", response_model=list[s.DeviceOut], tags=["devices"])
async def list_devices(
    admin: Admin, state: State, role: Literal["gateway", "connector", "client", "segment"] | None = None
) -> list[s.DeviceOut]:
    async with state.db.read() as session:
        rows = await devices.list_devices(session, role)
        owners = await devices.owners(session)
        return [_device_out(d, owners, raw) for d, raw in rows]


@router.post("/devices/{device_id}/revoke", response_model=s.DeviceOut, tags=["devices"])
async def revoke_device(device_id: int, admin: Admin, state: State) -> s.DeviceOut:
    """Cut the device off: its credential stops working and gateways drop its peer."""
    async with state.mutation(admin, "revoke-device", "device", shown_id(device_id)) as m:
        device, raw = await devices.revoke(m.tx.session, device_id)
        m.details = {"role": device.role, "name": device.name}
        return _device_out(device, await devices.owners(m.tx.session), raw)


@router.get("/status", response_model=s.StatusOut, tags=["devices"])
async def status(
    admin: Admin, state: State, role: Literal["gateway", "connector", "client", "segment"] | None = None
) -> s.StatusOut:
    """Every active component: online or offline (three report intervals), version, last
    seen, and what needs attention (offline, tunnel down, connectors not answering...)."""
    async with state.db.read() as session:
        rows = await devices.list_devices(session, role)
    now = utcnow()
    online: dict[str, int] = {}
    offline: dict[str, int] = {}
    components = []
    for d, raw_report in rows:
        if d.status != "active":
            continue
        stored, problem = read_stored(raw_report)
        health = component_health(d.role, d.last_seen_at, stored, problem, now)
        tally = online if health.online else offline
        tally[d.role] = tally.get(d.role, 0) + 1
        components.append(
            s.ComponentStatus(
                id=d.id,
                role=d.role,
                name=d.name,
                online=health.online,
                age_seconds=None if health.age_seconds is None else round(health.age_seconds, 1),
                version=stored.version if stored else None,
                last_seen_at=d.last_seen_at,
                last_handshake_at=stored.details.last_handshake_at if stored else None,
                attention=list(health.attention),
            )
        )
    order = {"gateway": 0, "connector": 1, "segment": 2, "client": 3}
    components.sort(key=lambda c: (order.get(c.role, 9), c.name, c.id))
    return s.StatusOut(revision=state.watch.current, online=online, offline=offline, components=components)

"""``GET /v1/devices`` and ``POST /v1/devices/{device_id}/revoke``: every
enrolled gateway, connector and client, with its latest report."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.ids import shown_id
from zerogate.controller.reports import read_stored
from zerogate.controller.services import devices
from zerogate.store.models import Device

router = APIRouter(prefix="/v1", tags=["devices"])


def _device_out(d: Device, owners: dict[int, str], raw_report: str | None) -> s.DeviceOut:
    stored, problem = read_stored(raw_report)
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

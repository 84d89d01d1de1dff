"""Enrolled devices (gateways, connectors, clients): list, revoke, and what they tell us.

A revoked device's credential stops working and gateways drop its peer at the
next revision. A device's calls are its signs of life (``last_seen_at``), and
its data-plane report (peers, handshakes, bytes) is stored as sent, then read
back through :func:`~zerogate.controller.reports.read_stored`, which shows a
report it cannot read as unavailable instead of failing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Select, Text, cast, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from zerogate.controller.ids import row_id, shown_id
from zerogate.controller.reports import DeviceReport
from zerogate.controller.services import report_history
from zerogate.controller.state import NotFound, Unauthorized
from zerogate.store.db import utcnow
from zerogate.store.models import Account, Device

# A long-poll is a sign of life, but recording each one would turn every watch
# (one per device every WATCH_SECONDS, 25 s) into a database write. The stored
# time itself is the throttle: it is rewritten only once it is this old, which
# also holds across several controllers sharing the database.
LAST_SEEN_EVERY = timedelta(seconds=30)


def _with_raw_report() -> Select[Device, str]:
    """Devices with their report as raw text: whatever a report in the database
    holds (10 MB, nesting 100,000 deep, not JSON) it is parsed by
    :func:`read_stored`, which shows it as unavailable instead of failing."""
    return select(Device, cast(Device.report, Text)).options(defer(Device.report)).order_by(Device.id)


async def owners(session: AsyncSession) -> dict[int, str]:
    """Account id -> username (a client device's owner)."""
    return {a.id: a.username for a in await session.scalars(select(Account))}


async def list_devices(session: AsyncSession, role: str | None = None) -> list[tuple[Device, str | None]]:
    """Every device (of ``role``), by id, with its stored report as raw text."""
    query = _with_raw_report()
    if role:
        query = query.where(Device.role == role)
    return [(device, raw) for device, raw in (await session.execute(query)).all()]


async def revoke(session: AsyncSession, device_id: int) -> tuple[Device, str | None]:
    """Revoke the device (once: a second revoke keeps the first time); NotFound for an unknown id."""
    key = row_id(device_id)
    found = (
        None if key is None else (await session.execute(_with_raw_report().where(Device.id == key))).first()
    )
    if found is None:
        raise NotFound(f"no device with id {shown_id(device_id)}")
    device, raw = found
    if device.status != "revoked":
        device.status, device.revoked_at = "revoked", utcnow()
    return device, raw


async def active_device(session: AsyncSession, device_id: int, *, with_report: bool = True) -> Device:
    """The calling device; Unauthorized when it is gone or revoked.

    ``with_report=False`` leaves the stored report unread: whatever is stored
    cannot then block the call (its replacement, say).
    """
    options = [] if with_report else [defer(Device.report)]
    device = await session.get(Device, device_id, options=options)
    if device is None or device.status != "active":
        raise Unauthorized("device was revoked")
    return device


def seen_is_due(device: Device, now: datetime) -> bool:
    """Whether a call from ``device`` now should be recorded as its last sign of life."""
    return device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_EVERY


async def mark_seen(session: AsyncSession, device_id: int) -> None:
    """Record a sign of life from the device (if it is still active)."""
    await session.execute(
        update(Device).where(Device.id == device_id, Device.status == "active").values(last_seen_at=utcnow())
    )


async def store_report(
    session: AsyncSession,
    device_id: int,
    report: DeviceReport,
    history: report_history.Recorder | None = None,
) -> None:
    """Replace the device's data-plane report (stamped now) and give ``history`` a sample
    of it (kept when one is due, see :mod:`~zerogate.controller.services.report_history`);
    Unauthorized when it was revoked.

    Not a config change: it changes nothing any device is told.
    """
    device = await active_device(session, device_id, with_report=False)
    now = utcnow()
    device.report = report.model_dump(mode="json") | {"at": now.isoformat()}
    device.last_seen_at = now
    if history is not None:
        await history.record_if_due(session, device_id, report, now)

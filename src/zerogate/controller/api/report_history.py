"""A device's report history (schema 0007), for graphs: ``GET /v1/devices/{device_id}/history``.

The router also runs the background pruner: started with the app, stopped
before the database closes (FastAPI nests a router's lifespan inside the app's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, FastAPI, Query
from pydantic import BaseModel

from zerogate.controller.auth import Admin, State
from zerogate.controller.fields import AwareTime
from zerogate.controller.ids import get_row, shown_id
from zerogate.controller.services import report_history
from zerogate.controller.state import ControllerState, NotFound
from zerogate.store.db import utcnow
from zerogate.store.models import Device

MAX_LIMIT = 10080  # a week of samples at one a minute


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ControllerState = app.state.zg
    pruner = report_history.pruner(state.db, state.settings.report_history_days)
    pruner.start()
    try:
        yield
    finally:
        await pruner.stop()


router = APIRouter(prefix="/v1", tags=["devices"], lifespan=lifespan)


class HistorySample(BaseModel):
    """One sample; null where the device's role has no such number."""

    at: datetime
    peers: int
    client_peers: int
    handshake_age_max: float | None  # seconds: the oldest gateway/connector handshake
    rx_bytes: int  # totals over all peers, as the device's WireGuard counts them
    tx_bytes: int
    connectors_up: int | None  # a gateway: connectors answering its probes
    connectors_active: int | None  # a gateway: connectors carrying their group
    tunnel_up: bool | None  # a connector
    nft_apply_ms: float | None  # a gateway: its last nftables change
    failovers: int | None  # a gateway: groups moved since it started
    revision: int | None


class HistoryOut(BaseModel):
    device_id: int
    name: str
    role: str
    interval_seconds: int  # at most one sample this often
    retention_days: float
    samples: list[HistorySample]
    more: bool  # more samples follow: ask again with since = the last sample's at


@router.get("/devices/{device_id}/history", response_model=HistoryOut)
async def device_history(
    device_id: int,
    admin: Admin,
    state: State,
    since: AwareTime | None = Query(None, description="Samples after this time (default: 24 h ago)"),
    limit: int = Query(1440, ge=1, le=MAX_LIMIT),
) -> HistoryOut:
    """The device's report samples after ``since``, oldest first (for graphs)."""
    # in UTC: SQLite compares stored times as text, written without their zone
    after = since.astimezone(UTC) if since is not None else utcnow() - timedelta(days=1)
    async with state.db.read() as session:
        device = await get_row(session, Device, device_id)
        if device is None:
            raise NotFound(f"no device with id {shown_id(device_id)}")
        rows, more = await report_history.samples(session, device.id, after, limit)
    settings = state.settings
    return HistoryOut(
        device_id=device.id,
        name=device.name,
        role=device.role,
        interval_seconds=settings.report_history_interval,
        retention_days=settings.report_history_days,
        samples=[HistorySample.model_validate(r, from_attributes=True) for r in rows],
        more=more,
    )

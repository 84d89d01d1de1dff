"""``GET /metrics``: the controller's and the devices' series in the Prometheus text format
(see :mod:`zerogate.controller.metrics`), for an admin or a metrics token."""

from __future__ import annotations

from fastapi import APIRouter, Response

from zerogate.controller.auth import MetricsReader, State
from zerogate.controller.health import component_health
from zerogate.controller.metrics import CONTENT_TYPE, device_families
from zerogate.controller.reports import read_stored
from zerogate.controller.services import devices
from zerogate.store.db import utcnow

router = APIRouter(tags=["meta"])


class MetricsResponse(Response):
    media_type = CONTENT_TYPE


@router.get("/metrics", response_class=MetricsResponse)
async def metrics(_: MetricsReader, state: State) -> MetricsResponse:
    """Prometheus exposition. Device series come from the latest stored reports of
    active gateways and connectors (clients are summed per gateway)."""
    async with state.db.read() as session:
        rows = [
            *await devices.list_devices(session, "gateway"),
            *await devices.list_devices(session, "connector"),
        ]
    now = utcnow()
    series = []
    for d, raw in rows:
        if d.status != "active":
            continue
        report, problem = read_stored(raw)
        online = component_health(d.role, d.last_seen_at, report, problem, now).online
        series.append((d.role, d.name, report, d.last_seen_at, online))
    return MetricsResponse(state.metrics.render(device_families(series, now)))

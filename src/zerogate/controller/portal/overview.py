"""The overview: every gateway, connector, segment server and client, online or offline.

The same data as ``GET /v1/status`` (its handler is called, so online/offline and
"needs attention" come from :mod:`zerogate.controller.health`), plus each device's
traffic from its latest report (``GET /v1/devices``): bytes received and sent over
all its WireGuard peers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from zerogate.controller import schemas as s
from zerogate.controller.portal import web

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)

ROLES = {"gateway": "Gateways", "connector": "Connectors", "segment": "Segment servers", "client": "Clients"}


def traffic(device: s.DeviceOut) -> tuple[int | None, int | None]:
    """Bytes received and sent by the device over all its peers (None: no report)."""
    if device.report is None:
        return None, None
    peers = device.report.peers
    return sum(p.rx_bytes for p in peers), sum(p.tx_bytes for p in peers)


@router.get(web.PATH)
@router.get(f"{web.PATH}/")
async def overview(request: Request) -> Response:
    session = await web.signed_in(request)
    status: s.StatusOut = await session.api("GET", "/v1/status", role=None)
    devices: list[s.DeviceOut] = await session.api("GET", "/v1/devices", role=None)
    by_id = {d.id: d for d in devices}
    sections: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    attention: list[tuple[str, str, str]] = []
    for c in status.components:
        rx, tx = traffic(by_id[c.id]) if c.id in by_id else (None, None)
        sections.setdefault(c.role, []).append({"c": c, "rx": rx, "tx": tx})
        attention += [(c.role, c.name, reason) for reason in c.attention]
    return session.render(
        "overview.html",
        roles=ROLES,
        sections=sections,
        attention=attention,
        online=status.online,
        offline=status.offline,
        revision=status.revision,
    )

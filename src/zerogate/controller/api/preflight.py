"""``POST /v1/enroll/preflight``: check a provisioning key without using it.

``zerogate preflight`` runs on a host *before* it enrolls. It sends the key
from the install string and learns whether the key would be accepted (the
same checks and messages as ``/v1/enroll``), which role it enrolls, and the
gateways a connector must reach over UDP, so it can probe them. No use is
consumed and a usable key leaves no audit record; refusals are audited
(aggregated per source) and throttled like enrollment. The key itself is never
logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from zerogate.controller import schemas as s
from zerogate.controller.auth import State, client_source
from zerogate.controller.services.enrollment import preview_key
from zerogate.controller.state import ApiProblem, ControllerState, Principal
from zerogate.netops.udp_probe import probe_port_for
from zerogate.pki.credentials import token_hint
from zerogate.store.models import Gateway

router = APIRouter(prefix="/v1", tags=["enrollment"])


class PreflightRequest(s.Strict):
    key: str = Field(min_length=8, max_length=128)


class GatewayEndpoint(BaseModel):
    name: str
    endpoint: str
    port_first: int
    port_last: int
    probe_port: int


class PreflightResponse(BaseModel):
    role: Literal["connector", "gateway", "segment"]
    connector_group: str | None = None
    segment_server: str | None = Field(
        default=None, description="For a segment key: the server this host becomes."
    )
    gateway: GatewayEndpoint | None = Field(
        default=None, description="For a gateway key: the gateway this host would become."
    )
    gateways: list[GatewayEndpoint] = Field(
        description="Gateways with an active enrolled device: what a connector must reach."
    )
    expires_at: datetime
    uses_left: int


def _endpoint(g: Gateway) -> GatewayEndpoint:
    return GatewayEndpoint(
        name=g.name,
        endpoint=g.public_endpoint,
        port_first=g.port_first,
        port_last=g.port_last,
        probe_port=probe_port_for(g.port_first),
    )


@router.post("/enroll/preflight", response_model=PreflightResponse)
async def enroll_preflight(body: PreflightRequest, request: Request, state: State) -> PreflightResponse:
    """Would this provisioning key enroll, and as what? Does not use the key up."""
    who = Principal(kind="anonymous", source=client_source(request))
    details = {"key": token_hint(body.key)}
    async with state.key_attempt(who, "enroll-preflight", "device", details):
        try:
            return await _preflight(state, body.key)
        except ApiProblem as exc:
            await state.refused(who, "enroll-preflight", "device", "", exc.message, details)
            raise


async def _preflight(state: ControllerState, secret: str) -> PreflightResponse:
    async with state.db.read() as session:
        preview = await preview_key(session, secret)
        return PreflightResponse(
            role=preview.role,
            connector_group=preview.connector_group.name if preview.connector_group else None,
            gateway=_endpoint(preview.gateway) if preview.gateway else None,
            segment_server=preview.segment_server.name if preview.segment_server else None,
            gateways=[_endpoint(g) for g in preview.gateways],
            expires_at=preview.key.expires_at,
            uses_left=preview.key.max_uses - preview.key.uses,
        )

"""The device side: provisioning keys, enrollment, client registration,
devices and client sessions. ``DeviceReport`` (the body of ``POST /v1/report``)
and its bounded parts live in :mod:`zerogate.controller.reports`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from zerogate.controller.fields import Cidr, ConnectorName, Description, WgKey
from zerogate.controller.reports import StoredReport
from zerogate.controller.schemas.base import Strict


class ProvisioningKeyCreate(Strict):
    description: Description = ""
    ttl_minutes: int | None = Field(default=None, ge=1, le=60 * 24 * 30)
    max_uses: int = Field(default=1, ge=1, le=10000)


class ProvisioningKeyOut(BaseModel):
    id: int
    hint: str
    description: str
    target: str
    max_uses: int
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    state: str
    created_by: str
    created_at: datetime


class ProvisioningKeyCreated(ProvisioningKeyOut):
    key: str
    install_string: str


class EnrollRequest(Strict):
    key: str = Field(min_length=8, max_length=128)
    name: ConnectorName
    csr: str = Field(min_length=100, max_length=8192)
    wg_public_key: WgKey


class EnrollResponse(BaseModel):
    device_id: int
    role: str
    name: str
    credential: str
    certificate: str
    ca_certificate: str


class ClientRegisterRequest(Strict):
    name: ConnectorName
    csr: str = Field(min_length=100, max_length=8192)
    wg_public_key: WgKey
    local_networks: list[Cidr] = Field(default_factory=list, max_length=256)


class ClientRegisterResponse(EnrollResponse):
    address: str
    address_block: str
    moved_from_default_block: bool
    session_expires_at: datetime


class DeviceOut(BaseModel):
    id: int
    role: str
    name: str
    status: str
    owner: str | None
    address: str | None
    wg_public_key: str
    cert_serial: str
    created_at: datetime
    revoked_at: datetime | None
    last_seen_at: datetime | None
    report: StoredReport | None = None
    report_problem: str | None = Field(default=None, description="why a stored report is not shown")
    online: bool | None = Field(
        default=None, description="active devices: heard from within 3 report intervals"
    )


class ComponentStatus(BaseModel):
    id: int
    role: str
    name: str
    online: bool
    age_seconds: float | None = Field(
        description="since the last report (gateway, connector) or sign of life"
    )
    version: str | None
    last_seen_at: datetime | None
    last_handshake_at: str | None = Field(description="a connector's last handshake with its gateway")
    attention: list[str]


class StatusOut(BaseModel):
    revision: int
    online: dict[str, int] = Field(description="role -> active devices online")
    offline: dict[str, int] = Field(description="role -> active devices offline")
    components: list[ComponentStatus]


class ClientSessionOut(BaseModel):
    device_id: int
    session_expires_at: datetime | None

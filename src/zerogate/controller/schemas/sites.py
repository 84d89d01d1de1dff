"""Sites: connector groups and their connectors, and gateways."""

from __future__ import annotations

from datetime import datetime
from ipaddress import ip_address, ip_network
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from zerogate.controller.fields import (
    Description,
    EndpointHost,
    ObjectName,
    ShortText,
    SiteSubnet,
    ip_text,
    no_overlap,
)
from zerogate.controller.schemas.base import Strict

BANDWIDTH_CLASSES = ("15mbps", "50mbps", "100mbps")
GroupMode = Literal["standby", "active-active"]
ACTIVE_ACTIVE_NEEDS_SNAT = (
    "mode active-active needs snat true: with SNAT off the application hosts send replies to the "
    "client pool through one next hop, but in active-active every connector carries flows, so the "
    "replies of flows through the others would be lost"
)
ACTIVE_ACTIVE_NO_VIP = (
    "mode active-active and vrrp_virtual_ip do not go together: the virtual IP is held by one "
    "connector (the master), while in active-active all connectors carry flows; use one or the other"
)


class ConnectorGroupBody(Strict):
    description: Description = ""
    subnets: list[SiteSubnet] = Field(min_length=1, max_length=64)
    snat: bool = True
    vrrp_virtual_ip: str | None = None
    mode: GroupMode = "standby"

    @model_validator(mode="after")
    def _consistent(self) -> ConnectorGroupBody:
        no_overlap(self.subnets, "subnets")
        if self.mode == "active-active" and not self.snat:
            raise ValueError(ACTIVE_ACTIVE_NEEDS_SNAT)
        if self.mode == "active-active" and self.vrrp_virtual_ip is not None:
            raise ValueError(ACTIVE_ACTIVE_NO_VIP)
        if self.vrrp_virtual_ip is not None:
            try:
                vip = ip_address(ip_text(self.vrrp_virtual_ip))
            except ValueError as exc:
                raise ValueError(f"vrrp_virtual_ip: {exc}") from None
            home = [ip_network(s) for s in self.subnets if vip in ip_network(s)]
            if not home:
                raise ValueError(f"vrrp_virtual_ip {vip} is in none of the group's subnets")
            if home[0].prefixlen < home[0].max_prefixlen - 1 and vip in (
                home[0].network_address,
                home[0].broadcast_address,
            ):
                raise ValueError(f"vrrp_virtual_ip {vip} is the network or broadcast address of {home[0]}")
            self.vrrp_virtual_ip = str(vip)
        return self


class ConnectorGroupCreate(ConnectorGroupBody):
    name: ObjectName


class ConnectorGroupUpdate(Strict):
    description: Description | None = None
    subnets: list[SiteSubnet] | None = Field(default=None, min_length=1, max_length=64)
    snat: bool | None = None
    vrrp_virtual_ip: str | None = None
    mode: GroupMode | None = None


class ConnectorGroupOut(BaseModel):
    id: int
    name: str
    description: str
    subnets: list[str]
    snat: bool
    vrrp_virtual_ip: str | None
    mode: str = "standby"
    connectors: list[str]
    created_at: datetime


class ConnectorUpdate(Strict):
    description: Description | None = None
    location: ShortText | None = None
    bandwidth_class: Literal["15mbps", "50mbps", "100mbps"] | None = None
    owner: ShortText | None = None
    draining: bool | None = None  # True: no new flows go to it (its established flows go on)


class ConnectorOut(BaseModel):
    id: int
    name: str
    description: str
    location: str
    bandwidth_class: str
    owner: str
    connector_group: str
    device_id: int
    draining: bool = False
    status: str
    last_seen_at: datetime | None
    created_at: datetime
    # From the connector's latest report; "unknown" when there is none from the last 30 s.
    tunnel: Literal["up", "down", "unknown"] = "unknown"
    last_handshake_at: datetime | None = None
    tunnel_hint: str | None = None


class GatewayCreate(Strict):
    name: ObjectName
    description: Description = ""
    public_endpoint: EndpointHost
    port_first: int = Field(default=51820, ge=1, le=65535)
    port_last: int = Field(default=53000, ge=1, le=65535)

    @model_validator(mode="after")
    def _range(self) -> GatewayCreate:
        if self.port_first > self.port_last:
            raise ValueError(f"port range {self.port_first}-{self.port_last} is empty (first > last)")
        return self


class GatewayUpdate(Strict):
    description: Description | None = None
    public_endpoint: EndpointHost | None = None
    port_first: int | None = Field(default=None, ge=1, le=65535)
    port_last: int | None = Field(default=None, ge=1, le=65535)


class GatewayOut(BaseModel):
    id: int
    name: str
    description: str
    public_endpoint: str
    port_first: int
    port_last: int
    device_id: int | None
    status: str
    last_seen_at: datetime | None
    created_at: datetime

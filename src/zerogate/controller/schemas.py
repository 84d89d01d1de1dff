"""Request and response bodies of the REST API, with all input validation.

Every string a client sends is parsed here once into a checked value; a
request that fails gets a 422 naming the field and the reason, and reaches no
service code. References between objects are by name (names are unique).

Request models are strict (:class:`Strict`): JSON ``0`` is not ``false`` and
``true`` is not ``1``, so a typo cannot quietly mean something else. The
checked field types (names, free text, addresses, keys) are in fields.py.
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Network, ip_address, ip_network
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zerogate.controller.fields import (
    Cidr,
    ClockTime,
    ConnectorName,
    Description,
    DestinationPrefix,
    DisplayName,
    Email,
    EndpointHost,
    IpAddress,
    ObjectName,
    Password,
    ShortText,
    SiteSubnet,
    TotpCode,
    Username,
    WgKey,
    ip_text,
    no_overlap,
    plain_text,
    routable_v4,
)
from zerogate.controller.reports import DeviceReport as DeviceReport  # the body of POST /v1/report
from zerogate.controller.reports import StoredReport
from zerogate.model.policy import PortRange

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

BANDWIDTH_CLASSES = ("15mbps", "50mbps", "100mbps")


class Strict(BaseModel):
    """A request body: unknown fields refused, no type coercion (``0`` is not ``false``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------- auth


class BootstrapRequest(Strict):
    code: str = Field(min_length=4, max_length=64)
    username: Username
    password: Password


class ActivateRequest(Strict):
    username: Username
    activation_code: str = Field(min_length=8, max_length=128)
    password: Password


class TotpEnrollment(BaseModel):
    username: str
    totp_secret: str
    otpauth_uri: str
    next_step: str = "confirm TOTP: POST /v1/auth/totp/confirm with a code from your authenticator"


class TotpConfirmRequest(Strict):
    username: Username
    password: Password
    totp: TotpCode


class LoginRequest(Strict):
    username: Username
    password: Password
    totp: TotpCode


class LoginResponse(BaseModel):
    token: str
    token_id: int
    kind: str
    username: str
    expires_at: datetime


class TokenCreate(Strict):
    name: ObjectName
    ttl_days: int = Field(default=30, ge=1, le=3650)


class TokenOut(BaseModel):
    id: int
    name: str
    kind: str
    hint: str
    username: str
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class TokenCreated(TokenOut):
    token: str


# ----------------------------------------------------------------- accounts and groups


class AccountCreate(Strict):
    username: Username
    display_name: DisplayName = ""
    email: Email = ""
    groups: list[ObjectName] = Field(default_factory=list, max_length=100)


class AccountUpdate(Strict):
    display_name: DisplayName | None = None
    email: Email | None = None
    groups: list[ObjectName] | None = Field(default=None, max_length=100)
    disabled: bool | None = None


class AccountOut(BaseModel):
    id: int
    kind: str
    username: str
    display_name: str
    email: str
    status: str
    totp_enrolled: bool
    groups: list[str]
    created_at: datetime


class AccountCreated(AccountOut):
    activation_code: str
    activation_expires_at: datetime


class GroupCreate(Strict):
    name: ObjectName
    description: Description = ""
    members: list[Username] = Field(default_factory=list, max_length=100000)


class GroupUpdate(Strict):
    description: Description | None = None
    members: list[Username] | None = Field(default=None, max_length=100000)


class GroupOut(BaseModel):
    id: int
    name: str
    description: str
    members: list[str]
    created_at: datetime


class GroupMembersChange(Strict):
    """PATCH /v1/groups/{name}/members: a change to the member list, not the whole list."""

    add: list[Username] = Field(default_factory=list, max_length=100000, description="Users to add.")
    remove: list[Username] = Field(default_factory=list, max_length=100000, description="Users to remove.")

    @model_validator(mode="after")
    def _meaningful(self) -> GroupMembersChange:
        if not self.add and not self.remove:
            raise ValueError("nothing to change: give usernames in 'add' and/or 'remove'")
        both = set(self.add) & set(self.remove)
        if both:
            # Positions, not the names: an error never echoes the request back.
            where = ", ".join([f"add[{i}]" for i, n in enumerate(self.add) if n in both][:5])
            raise ValueError(f"a user cannot be both added and removed ({where}); leave it out of one list")
        return self


class GroupMembersChanged(BaseModel):
    name: str
    added: list[str] = Field(description="Users that became members (already members are not listed).")
    removed: list[str] = Field(description="Users that stopped being members (non-members are not listed).")
    member_count: int = Field(description="How many members the group has now.")


# ----------------------------------------------------------------- sites and devices


class ConnectorGroupBody(Strict):
    description: Description = ""
    subnets: list[SiteSubnet] = Field(min_length=1, max_length=64)
    snat: bool = True
    vrrp_virtual_ip: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ConnectorGroupBody:
        no_overlap(self.subnets, "subnets")
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


class ConnectorGroupOut(BaseModel):
    id: int
    name: str
    description: str
    subnets: list[str]
    snat: bool
    vrrp_virtual_ip: str | None
    connectors: list[str]
    created_at: datetime


class ConnectorUpdate(Strict):
    description: Description | None = None
    location: ShortText | None = None
    bandwidth_class: Literal["15mbps", "50mbps", "100mbps"] | None = None
    owner: ShortText | None = None


class ConnectorOut(BaseModel):
    id: int
    name: str
    description: str
    location: str
    bandwidth_class: str
    owner: str
    connector_group: str
    device_id: int
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


class ClientSessionOut(BaseModel):
    device_id: int
    session_expires_at: datetime | None


# DeviceReport (the body of POST /v1/report) and its bounded parts live in reports.py.


# ----------------------------------------------------------------- applications and policy


class DestinationIn(Strict):
    address: DestinationPrefix
    protocol: Literal["tcp", "udp", "icmp", "any"] = "tcp"
    ports: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[str]) -> list[str]:
        return [str(PortRange.parse(p)) for p in value]

    @model_validator(mode="after")
    def _icmp(self) -> DestinationIn:
        if self.protocol in ("icmp", "any") and self.ports:
            raise ValueError(f"protocol {self.protocol} takes no ports")
        if self.protocol in ("tcp", "udp") and not self.ports:
            raise ValueError(f"protocol {self.protocol} needs at least one port or range (1-65535)")
        return self


class ApplicationCreate(Strict):
    name: ObjectName
    description: Description = ""
    connector_group: ObjectName
    destinations: list[DestinationIn] = Field(min_length=1, max_length=100)


class ApplicationUpdate(Strict):
    description: Description | None = None
    connector_group: ObjectName | None = None
    destinations: list[DestinationIn] | None = Field(default=None, min_length=1, max_length=100)


class ApplicationOut(BaseModel):
    id: int
    name: str
    description: str
    connector_group: str
    destinations: list[dict[str, Any]]
    created_at: datetime


class TimeWindowIn(Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(_DAYS),  # type: ignore[arg-type]
        min_length=1,
        max_length=7,
    )
    start: ClockTime
    end: ClockTime
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        plain_text(value)
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _nonempty(self) -> TimeWindowIn:
        if self.start == self.end:
            raise ValueError("time window start and end are equal; omit the window to allow all day")
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "days": sorted({_DAYS.index(d) for d in self.days}),
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "tz": self.tz,
        }


class PolicyCreate(Strict):
    name: ObjectName
    description: Description = ""
    groups: list[ObjectName] = Field(min_length=1, max_length=1000)
    applications: list[ObjectName] = Field(min_length=1, max_length=10000)
    require_mfa: bool = False
    time_window: TimeWindowIn | None = None
    enabled: bool = True


class PolicyUpdate(Strict):
    description: Description | None = None
    groups: list[ObjectName] | None = Field(default=None, min_length=1, max_length=1000)
    applications: list[ObjectName] | None = Field(default=None, min_length=1, max_length=10000)
    require_mfa: bool | None = None
    time_window: TimeWindowIn | None = None
    clear_time_window: bool = False
    enabled: bool | None = None


class PolicyOut(BaseModel):
    id: int
    name: str
    description: str
    groups: list[str]
    applications: list[str]
    require_mfa: bool
    time_window: dict[str, Any] | None
    enabled: bool
    created_at: datetime


class ExplainRequest(Strict):
    username: Username
    destination: IpAddress
    protocol: Literal["tcp", "udp", "icmp"] = "tcp"
    port: int | None = Field(default=None, ge=1, le=65535)
    mfa: bool = True

    @model_validator(mode="after")
    def _port_fits_protocol(self) -> ExplainRequest:
        if self.protocol == "icmp" and self.port is not None:
            raise ValueError("icmp has no ports: leave port out")
        if self.protocol != "icmp" and self.port is None:
            raise ValueError(f"{self.protocol} needs a port (1-65535)")
        return self


class ExplainResponse(BaseModel):
    allowed: bool
    policy: str | None
    reason: str


class AddressPoolUpdate(Strict):
    blocks: list[Cidr] = Field(min_length=1, max_length=64)

    @field_validator("blocks")
    @classmethod
    def _v4(cls, value: list[str]) -> list[str]:
        for b in value:
            net = ip_network(b)
            if not isinstance(net, IPv4Network) or net.prefixlen > 30:
                raise ValueError(f"{b}: client address blocks are IPv4 prefixes of /30 or larger")
            routable_v4(b, "client address blocks")
        no_overlap(value, "blocks")
        return value


class AddressPoolOut(BaseModel):
    name: str
    blocks: list[str]
    allocated: int


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    source: str
    action: str
    object_type: str
    object_id: str
    outcome: str
    details: dict[str, Any]
    hash: str


class AuditVerifyOut(BaseModel):
    """The chain check plus the anchor outside the database (see store/anchor.py)."""

    ok: bool
    records: int
    head_id: int
    problems: list[dict[str, Any]]
    anchored_from: int | None = Field(
        None, description="First record that must carry a MAC; older ones are only chain-checked."
    )
    not_anchored: int = Field(0, description="Records written before the log was anchored.")
    checkpoints: int = Field(0, description="Checkpoints in this controller's anchor file.")
    newest_checkpoint: int = Field(0, description="Newest record id a checkpoint saw; the log must reach it.")
    warnings: list[str] = Field(default_factory=list)

"""Request and response bodies of the REST API, with all input validation.

Every string a client sends is parsed here once into a checked value; a
request that fails gets a 422 naming the field and the reason, and reaches no
service code. References between objects are by name (names are unique).
"""

from __future__ import annotations

import re
from datetime import datetime, time
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from zerogate.model.policy import PortRange

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Connector names: 1-50 printable characters (letters, digits, symbols), no
# leading/trailing space.
_CONNECTOR_NAME = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,48}[\x21-\x7e])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_WG_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

BANDWIDTH_CLASSES = ("15mbps", "50mbps", "100mbps")


def _check(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


def _cidr(value: str) -> str:
    text = value.strip()
    try:
        return str(ip_network(text, strict=True))
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR prefix") from None
    raise ValueError(f"{value!r} has host bits set; did you mean {loose}?")


def _wg_key(value: str) -> str:
    if not _WG_KEY.match(value):
        raise ValueError("not a WireGuard public key (44 characters of base64, as 'wg pubkey' prints)")
    return value


Username = Annotated[str, Field(min_length=1, max_length=64), _check(_USERNAME, "username (a-z 0-9 . _ @ -)")]
ObjectName = Annotated[
    str, Field(min_length=1, max_length=64), _check(_OBJECT_NAME, "name (letters, digits, . _ -; up to 64)")
]
ConnectorName = Annotated[
    str,
    Field(min_length=1, max_length=50),
    _check(_CONNECTOR_NAME, "connector name (1-50 letters, digits and symbols)"),
]
Description = Annotated[str, Field(max_length=255)]
Cidr = Annotated[str, AfterValidator(_cidr)]
WgKey = Annotated[str, AfterValidator(_wg_key)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
TotpCode = Annotated[str, Field(min_length=6, max_length=8, pattern=r"^\d{6,8}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_overlap(prefixes: list[str], what: str) -> None:
    nets = [ip_network(p) for p in prefixes]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                raise ValueError(f"{what} {a} and {b} overlap")


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
    display_name: str = Field(default="", max_length=100)
    email: str = Field(default="", max_length=254, pattern=r"^$|^[^@\s]+@[^@\s]+$")
    groups: list[ObjectName] = Field(default_factory=list, max_length=100)


class AccountUpdate(Strict):
    display_name: str | None = Field(default=None, max_length=100)
    email: str | None = Field(default=None, max_length=254, pattern=r"^$|^[^@\s]+@[^@\s]+$")
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


# ----------------------------------------------------------------- sites and devices


class ConnectorGroupBody(Strict):
    description: Description = ""
    subnets: list[Cidr] = Field(min_length=1, max_length=64)
    snat: bool = True
    vrrp_virtual_ip: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ConnectorGroupBody:
        _no_overlap(self.subnets, "subnets")
        if self.vrrp_virtual_ip is not None:
            try:
                vip = ip_address(self.vrrp_virtual_ip)
            except ValueError:
                raise ValueError(f"vrrp_virtual_ip {self.vrrp_virtual_ip!r} is not an IP address") from None
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
    subnets: list[Cidr] | None = Field(default=None, min_length=1, max_length=64)
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
    location: str | None = Field(default=None, max_length=100)
    bandwidth_class: Literal["15mbps", "50mbps", "100mbps"] | None = None
    owner: str | None = Field(default=None, max_length=100)


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


def _endpoint_host(value: str) -> str:
    try:
        return str(ip_address(value))
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is not a hostname or IP address") from None
        return value.lower()


class GatewayCreate(Strict):
    name: ObjectName
    description: Description = ""
    public_endpoint: Annotated[str, Field(max_length=253), AfterValidator(_endpoint_host)]
    port_first: int = Field(default=51820, ge=1, le=65535)
    port_last: int = Field(default=53000, ge=1, le=65535)

    @model_validator(mode="after")
    def _range(self) -> GatewayCreate:
        if self.port_first > self.port_last:
            raise ValueError(f"port range {self.port_first}-{self.port_last} is empty (first > last)")
        return self


class GatewayUpdate(Strict):
    description: Description | None = None
    public_endpoint: Annotated[str, Field(max_length=253), AfterValidator(_endpoint_host)] | None = None
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
    report: dict[str, Any] | None = None


class ClientSessionOut(BaseModel):
    device_id: int
    session_expires_at: datetime | None


class DeviceReport(Strict):
    """What a gateway, connector or client says about its data plane."""

    version: str = Field(max_length=40)
    interface: str = Field(max_length=15)
    peers: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)
    details: dict[str, Any] = Field(default_factory=dict)


# ----------------------------------------------------------------- applications and policy


class DestinationIn(Strict):
    address: Cidr
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
    start: time
    end: time
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
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
    destination: str
    protocol: Literal["tcp", "udp", "icmp"] = "tcp"
    port: int | None = Field(default=None, ge=1, le=65535)
    mfa: bool = True

    @field_validator("destination")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

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
        _no_overlap(value, "blocks")
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
    ok: bool
    records: int
    head_id: int
    problems: list[dict[str, Any]]


def overlapping(a: str, b: str) -> bool:
    na: IPv4Network | IPv6Network = ip_network(a)
    nb: IPv4Network | IPv6Network = ip_network(b)
    return na.version == nb.version and na.overlaps(nb)

"""The config snapshot: the contract between the controller and every device.

``GET /v1/snapshot`` answers each device with exactly what its role needs,
one frozen type per role: :class:`GatewaySnapshot`, :class:`ConnectorSnapshot`,
:class:`ClientSnapshot`, :class:`SegmentSnapshot`. The controller builds the typed object and sends
``model_dump(mode="json")``; a device calls :func:`parse_snapshot` once, where
the JSON comes in (the follower, and the CLI reading ``snapshot.json``), and
from there on planners and daemons use attributes only.

Why pydantic (v2) and not frozen dataclasses plus a hand-written parser: the
devices parse untrusted JSON, and pydantic gives strict checking of every
field (``extra="forbid"``, strict scalars: ``"1"`` is no port and ``0`` no
``false``), nested types, errors naming the failing field, and the
serialisation back to the same JSON, from one declaration. The models are
frozen, so a snapshot is a value that can be shared between threads.
Addresses, prefixes and times are parsed from text only (a number is no
address). Everything a planner writes into a WireGuard config or an
nftables script (keys, endpoints, set elements) is held to a pattern here,
so no text from the wire can add a line or a statement there.

Versions. ``schema_version`` is "MAJOR.MINOR" (:data:`SCHEMA_VERSION`). The
controller adds only optional fields in a new minor and changes the major
for anything else. A device refuses another major (:class:`UnsupportedSchema`,
whose message says what to upgrade) and accepts a higher minor: then, and
only then, it ignores fields it does not know; for its own minor or a lower
one an unknown field is an error. A document without ``schema_version``
(a ``snapshot.json`` cached before versioning) is read as 1.0, with one
upgrade: its gateway grants still carry the policy rules (``rules``: lists
of destination, protocol, first and last port), which are cut into
elements here as the controller now does (:meth:`GatewayGrant.from_rules`).

Gateway grants come in the shape the gateway's nftables renderer uses: the
sources (the plain set ``p<id>_src``) and the disjoint interval elements of
the sets ``p<id>_svc`` (``address-range . tcp|udp . port[-port]``),
``p<id>_icmp`` and ``p<id>_any``. The controller computes them once per
policy revision (:func:`zerogate.policy.intervals.disjoint`, pure); the
gateway only renders.

Revocation is not a snapshot the controller sends: when it refuses the
device's credential the follower hands the daemon a :class:`RevokedSnapshot`,
and the daemon removes what a revoked device must not keep.

Errors: :class:`SnapshotError` (a ``ValueError``) and its two kinds,
:class:`UnsupportedSchema` and :class:`InvalidSnapshot`; a device that gets
one keeps its previous state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal, overload

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from zerogate.model.snapshot_fields import (
    SSH_HOST_KEY,
    SSH_USER,
    WINRM_USER,
    X509_PIN,
    AccountName,
    Address,
    AddressRange,
    AnyAddress,
    AnyPrefix,
    AssetName,
    EndpointHost,
    HostKeyText,
    Port,
    Prefix,
    SchemaVersion,
    ServiceElement,
    SourceText,
    Timestamp,
    WgKeyText,
    Wire,
)
from zerogate.policy.intervals import disjoint

# the field types are re-exported: devices and the controller import them from here
__all__ = [
    "SCHEMA_MAJOR",
    "SCHEMA_MINOR",
    "SCHEMA_VERSION",
    "SSH_HOST_KEY",
    "SSH_USER",
    "WINRM_USER",
    "X509_PIN",
    "AccountName",
    "Address",
    "AddressRange",
    "AnyAddress",
    "AnyPrefix",
    "AssetName",
    "ClientPeer",
    "ClientSnapshot",
    "ConnectorEntry",
    "ConnectorGroupConfig",
    "ConnectorSnapshot",
    "EndpointHost",
    "GatewayConfig",
    "GatewayEntry",
    "GatewayGrant",
    "GatewayPolicy",
    "GatewaySnapshot",
    "HostKeyText",
    "InvalidSnapshot",
    "JitOpening",
    "Port",
    "Prefix",
    "RevokedSnapshot",
    "RuleTuple",
    "SchemaVersion",
    "SegmentAsset",
    "SegmentRule",
    "SegmentSnapshot",
    "ServiceElement",
    "Snapshot",
    "SnapshotBase",
    "SnapshotError",
    "SourceText",
    "Timestamp",
    "UnsupportedSchema",
    "WgKeyText",
    "Wire",
    "parse_snapshot",
]

SCHEMA_MAJOR = 1
SCHEMA_MINOR = 2  # 1.1: segment assets' openings and os; 1.2: connectors' active-active slot, port, drain
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"


class SnapshotError(ValueError):
    """A snapshot this device cannot use; it keeps its previous state."""


class UnsupportedSchema(SnapshotError):
    """The snapshot's major schema version is not the one this device understands."""

    def __init__(self, role: str, sent: str) -> None:
        major = int(sent.split(".", 1)[0])
        upgrade = "zerogate on this host" if major > SCHEMA_MAJOR else "the controller"
        super().__init__(
            f"this {role} understands snapshot schema {SCHEMA_MAJOR}.x; the controller sent {sent}: "
            f"upgrade {upgrade}"
        )
        self.sent = sent


class InvalidSnapshot(SnapshotError):
    """The snapshot is not valid JSON of the expected shape and types."""


# --------------------------------------------------------------------------- shared parts


class GatewayEntry(Wire):
    """A gateway as connectors and clients dial it."""

    name: StrictStr
    endpoint: EndpointHost
    port: Port
    # absent from controllers before gateways had a port range
    port_first: Port | None = None
    port_last: Port | None = None
    wg_public_key: WgKeyText
    tunnel_address: Address | None


class ConnectorEntry(Wire):
    """A connector as the gateway sees it: a peer that carries its group's subnets when active."""

    name: StrictStr
    device_id: StrictInt
    wg_public_key: WgKeyText
    address: Address | None
    connector_group: StrictStr
    subnets: tuple[Prefix, ...]
    # 1.2: in an active-active group, the connector's slot (its conntrack mark's high byte,
    # its routing table) and the gateway port it dials (its own WireGuard interface there)
    slot: Annotated[StrictInt, Field(ge=1, le=255)] | None = None
    listen_port: Port | None = None
    draining: StrictBool = False  # 1.2: gets no new flows


class ClientPeer(Wire):
    """A client device as the gateway sees it: a peer while its session lasts."""

    device_id: StrictInt
    wg_public_key: WgKeyText
    address: Address | None
    session_expires_at: Timestamp | None


RuleTuple = tuple[str | IPv4Network | IPv6Network, str, int, int]


class GatewayGrant(Wire):
    """One policy as the gateway enforces it: who (``sources``) may reach what
    (the disjoint elements of the ``p<id>_svc``, ``p<id>_icmp`` and ``p<id>_any`` sets)."""

    policy_id: StrictInt
    name: StrictStr
    sources: tuple[SourceText, ...]
    services: tuple[ServiceElement, ...]
    icmp: tuple[AddressRange, ...]
    any_protocol: tuple[AddressRange, ...]

    @classmethod
    def from_rules(
        cls,
        policy_id: int,
        name: str,
        sources: Iterable[str | IPv4Address],
        rules: Iterable[RuleTuple],
    ) -> GatewayGrant:
        """Cut a policy's rules (destination, protocol, first and last port),
        which overlap freely, into the disjoint elements nftables interval sets
        accept; IPv6 destinations are left out (the tunnel carries IPv4 only)."""
        by_proto: dict[str, list[tuple[IPv4Network, int, int]]] = {}
        for dest, proto, first, last in rules:
            net = ip_network(dest) if isinstance(dest, str) else dest
            if isinstance(net, IPv4Network):
                by_proto.setdefault(proto, []).append((net, first, last))
        services = tuple(
            f"{e.address_text()} . {proto} . {lo if lo == hi else f'{lo}-{hi}'}"
            for proto in ("tcp", "udp")
            for e in disjoint(by_proto.get(proto, []))
            for lo, hi in e.ports
        )

        def addresses(proto: str) -> tuple[str, ...]:
            return tuple(
                e.address_text() for e in disjoint([(n, 0, 0) for n, _, _ in by_proto.get(proto, [])])
            )

        return cls(
            policy_id=policy_id,
            name=name,
            sources=tuple(str(s) for s in sources),
            services=services,
            icmp=addresses("icmp"),
            any_protocol=addresses("any"),
        )

    @model_validator(mode="before")
    @classmethod
    def _legacy_rules(cls, data: Any, info: ValidationInfo) -> Any:
        """A grant cached before versioning: its ``rules`` become elements."""
        legacy = isinstance(info.context, Mapping) and info.context.get("legacy")
        if not (legacy and isinstance(data, Mapping) and "rules" in data):
            return data
        rules = data["rules"]
        if not isinstance(rules, list) or not all(_is_rule(r) for r in rules):
            raise ValueError("rules: each rule is [destination, protocol, first port, last port]")
        sources = data.get("sources")
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ValueError("sources: a list of addresses")
        policy_id, name = data.get("policy_id"), data.get("name", "")
        if type(policy_id) is not int or not isinstance(name, str):
            raise ValueError("policy_id and name: a number and a text")
        grant = cls.from_rules(policy_id, name, sources, [(r[0], r[1], r[2], r[3]) for r in rules])
        return grant.model_dump()  # the fields, validated once more like any other grant


def _is_rule(rule: object) -> bool:
    return (
        isinstance(rule, list)
        and len(rule) == 4
        and isinstance(rule[0], str)
        and isinstance(rule[1], str)
        and all(type(p) is int and 0 <= p <= 65535 for p in rule[2:])
    )


class GatewayPolicy(Wire):
    """The compiled policy of one revision, good until ``valid_until`` (a time window's edge)."""

    grants: tuple[GatewayGrant, ...]
    valid_until: Timestamp | None


class GatewayConfig(Wire):
    """The gateway's own listener."""

    name: StrictStr
    public_endpoint: EndpointHost
    port_first: Port
    port_last: Port


class ConnectorGroupConfig(Wire):
    """The connector's group: the subnets it fronts and how it forwards into them."""

    name: StrictStr
    subnets: tuple[Prefix, ...]
    snat: StrictBool
    vrrp_virtual_ip: Address | None


# --------------------------------------------------------------------------- one type per role


class SnapshotBase(Wire):
    schema_version: SchemaVersion = SCHEMA_VERSION
    revision: StrictInt
    device_id: StrictInt
    name: StrictStr

    @property
    def policy_valid_until(self) -> datetime | None:
        """When the snapshot goes stale without a new revision (a time window opening)."""
        return None


class GatewaySnapshot(SnapshotBase):
    role: Literal["gateway"] = "gateway"
    gateway: GatewayConfig | None
    tunnel_addresses: tuple[Address, ...]
    client_blocks: tuple[Prefix, ...]
    connectors: tuple[ConnectorEntry, ...]
    clients: tuple[ClientPeer, ...]
    policy: GatewayPolicy

    @property
    def policy_valid_until(self) -> datetime | None:
        return self.policy.valid_until


class ConnectorSnapshot(SnapshotBase):
    role: Literal["connector"] = "connector"
    address: Address | None
    connector_group: ConnectorGroupConfig
    client_blocks: tuple[Prefix, ...]
    gateways: tuple[GatewayEntry, ...]


class ClientSnapshot(SnapshotBase):
    role: Literal["client"] = "client"
    address: Address | None
    session_expires_at: Timestamp | None
    gateways: tuple[GatewayEntry, ...]
    routes: tuple[AnyPrefix, ...]
    applications: tuple[StrictStr, ...]


class SegmentRule(Wire):
    """One rule on an asset's input hook: an approved rule (``accept``, in mode
    protected) or an explicit deny (``drop``, in mode learning_with_blocks).
    No ``sources`` means from anywhere."""

    rule_id: StrictInt
    action: Literal["accept", "drop"]
    protocol: Literal["tcp", "udp"]
    port_first: Port
    port_last: Port
    sources: tuple[AnyPrefix, ...] = Field(max_length=256)


class JitOpening(Wire):
    """A just-in-time opening on a protected asset: ``source`` (one address, the
    requester's as the segment server saw it) may reach ``protocol``/``port`` until
    ``expires_at``. On the host it is one element of the table's ``jit`` sets with a
    kernel timeout, so it closes by itself even when the server and the controller
    are down; the server removes it early when it leaves the snapshot (revoked)."""

    opening_id: StrictInt
    source: AnyAddress
    protocol: Literal["tcp", "udp"]
    port: Port
    expires_at: Timestamp


class SegmentAsset(Wire):
    """A host the segment server manages (``os`` linux: over SSH; windows: over WinRM,
    ``ssh_port``/``ssh_user`` then being the WinRM port and account), and the state it must be in.

    ``host_key`` is pinned at onboarding (an SSH host key, or for Windows the listener
    certificate's ``x509-sha256`` pin); without it the server only scans the
    key and reports it for the admin to trust. ``rules_revision`` changes with
    the mode or the rules: the server enforces each revision once."""

    asset_id: StrictInt
    name: AssetName
    address: AnyAddress
    ssh_port: Port
    ssh_user: AccountName
    host_key: HostKeyText | None
    mode: Literal["monitored", "learning", "learning_with_blocks", "protected"]
    rules_revision: StrictInt
    rules: tuple[SegmentRule, ...] = Field(max_length=1024)
    jump_hosts: tuple[AnyPrefix, ...] = Field(max_length=64)
    jit_openings: tuple[JitOpening, ...] = Field(default=(), max_length=4096)
    os: Literal["linux", "windows"] = "linux"  # 1.1: absent means linux

    @model_validator(mode="after")
    def _per_os(self) -> SegmentAsset:
        """The account and the pin must be of the asset's kind: an SSH login never takes a
        Windows account (it goes into ssh's argv), a WinRM session never an SSH key."""
        windows = self.os == "windows"
        if not re.fullmatch(WINRM_USER if windows else SSH_USER, self.ssh_user):
            raise ValueError("ssh_user is not a " + ("WinRM account" if windows else "POSIX user name"))
        if self.host_key is not None and windows != bool(re.fullmatch(X509_PIN, self.host_key)):
            raise ValueError("host_key is not a " + ("certificate pin" if windows else "SSH host key"))
        return self


class SegmentSnapshot(SnapshotBase):
    role: Literal["segment"] = "segment"
    assets: tuple[SegmentAsset, ...]
    learn_outbound: StrictBool = False


Snapshot = GatewaySnapshot | ConnectorSnapshot | ClientSnapshot | SegmentSnapshot


class RevokedSnapshot(Wire):
    """What the follower hands the daemon when the controller refuses the device:
    remove the tunnel and policy, forget the cached snapshot."""

    role: StrictStr
    device_id: StrictInt
    name: StrictStr
    revision: Literal[-1] = -1
    revoked: Literal[True] = True

    @classmethod
    def of(cls, snapshot: Snapshot) -> RevokedSnapshot:
        return cls(role=snapshot.role, device_id=snapshot.device_id, name=snapshot.name)


_TYPES: dict[str, type[Snapshot]] = {
    "gateway": GatewaySnapshot,
    "connector": ConnectorSnapshot,
    "client": ClientSnapshot,
    "segment": SegmentSnapshot,
}


# --------------------------------------------------------------------------- parsing


@overload
def parse_snapshot(role: Literal["gateway"], data: object) -> GatewaySnapshot: ...
@overload
def parse_snapshot(role: Literal["connector"], data: object) -> ConnectorSnapshot: ...
@overload
def parse_snapshot(role: Literal["client"], data: object) -> ClientSnapshot: ...
@overload
def parse_snapshot(role: Literal["segment"], data: object) -> SegmentSnapshot: ...
@overload
def parse_snapshot(role: str, data: object) -> Snapshot: ...


def parse_snapshot(role: str, data: object) -> Snapshot:
    """The typed snapshot of a ``role`` device from the controller's JSON (parsed).

    Raises :class:`UnsupportedSchema` for another major version and
    :class:`InvalidSnapshot` for anything else that does not fit.
    """
    kind = _TYPES.get(role)
    if kind is None:
        raise ValueError(f"no snapshot type for role {role!r}")
    if not isinstance(data, Mapping):
        raise InvalidSnapshot(f"the {role} snapshot is not a JSON object")
    sent = data.get("role")
    if sent != role:
        shown = repr(sent) if isinstance(sent, str) and len(sent) < 20 else "no valid role"
        raise InvalidSnapshot(f"the snapshot is for {shown}, but this device is a {role}")
    legacy = "schema_version" not in data
    if legacy:  # cached before versioning: that was 1.0
        data = {**data, "schema_version": "1.0"}
    version = data["schema_version"]
    numbers = _version(version) if isinstance(version, str) else None
    if numbers is None:
        raise InvalidSnapshot("schema_version is not MAJOR.MINOR")
    major, minor = numbers
    if major != SCHEMA_MAJOR:
        raise UnsupportedSchema(role, str(version))
    context = {"newer": minor > SCHEMA_MINOR, "legacy": legacy}
    try:
        return kind.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidSnapshot(f"the {role} snapshot is not valid: {_summary(exc)}") from None


def _version(text: str) -> tuple[int, int] | None:
    major, dot, minor = text.partition(".")
    if not (dot and major.isascii() and minor.isascii() and major.isdigit() and minor.isdigit()):
        return None
    if len(major) > 4 or len(minor) > 4:
        return None
    return int(major), int(minor)


def _summary(exc: ValidationError, shown: int = 3) -> str:
    """The first few errors as ``field.path: message``; never the (untrusted) values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: "
        + ("not in the expected form" if e["type"] == "string_pattern_mismatch" else e["msg"])
        for e in errors[:shown]
    ]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more

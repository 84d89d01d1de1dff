"""SQLAlchemy tables: the controller's whole state.

One table per object the API exposes, plus the singleton ``deployment_state``
row that carries the config revision and the audit-chain head. JSON columns
hold small value lists (subnets, destinations) that are always read whole.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC and come back time-zone aware on every database.

    SQLite has no time zone type and returns naive values; PostgreSQL returns
    aware ones. Normalising here keeps API output and comparisons identical.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored; use zerogate.store.db.utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class DeploymentState(Base):
    """Singleton row (id=1): config revision, bootstrap code, audit head."""

    __tablename__ = "deployment_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    revision: Mapped[int] = mapped_column(default=1)
    bootstrap_digest: Mapped[str | None] = mapped_column(String(64))
    bootstrap_expires_at: Mapped[datetime | None]
    audit_head_id: Mapped[int] = mapped_column(default=0)
    audit_head_hash: Mapped[str] = mapped_column(String(64), default="0" * 64)
    created_at: Mapped[datetime]


group_members = Table(
    "group_members",
    Base.metadata,
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
)

policy_groups = Table(
    "policy_groups",
    Base.metadata,
    Column("policy_id", ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="RESTRICT"), primary_key=True),
)

policy_applications = Table(
    "policy_applications",
    Base.metadata,
    Column("policy_id", ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
    Column("application_id", ForeignKey("applications.id", ondelete="RESTRICT"), primary_key=True),
)


class Account(Base):
    """An admin (manages the deployment) or a user (reaches applications)."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "admin" | "user"
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    # "pending" (no password/TOTP yet), "active", "disabled"
    status: Mapped[str] = mapped_column(String(16), default="pending")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int | None]
    activation_digest: Mapped[str | None] = mapped_column(String(64))
    activation_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    groups: Mapped[list[Group]] = relationship(
        secondary=group_members, back_populates="members", lazy="selectin"
    )


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime]
    # Never loaded: a group may have thousands of members, and loading them
    # (eagerly, as "selectin" did, with their groups and those groups'
    # members in turn) made every change O(group size). Membership is read and
    # written as group_members rows (controller/services/membership.py); deleting a
    # group leaves its rows to the foreign key's ON DELETE CASCADE.
    members: Mapped[list[Account]] = relationship(
        secondary=group_members, back_populates="groups", lazy="raise", passive_deletes=True
    )


class ConnectorGroup(Base):
    """Connectors that front the same subnets; any one of them can carry the traffic."""

    __tablename__ = "connector_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    subnets: Mapped[list[str]] = mapped_column(JSON)
    snat: Mapped[bool] = mapped_column(Boolean, default=True)
    vrrp_virtual_ip: Mapped[str | None] = mapped_column(String(45))
    # "standby": one connector carries the group, the others are hot standby;
    # "active-active": the gateway spreads new flows over all live connectors
    mode: Mapped[str] = mapped_column(String(16), default="standby", server_default="standby")
    created_at: Mapped[datetime]


class Device(Base):
    """An enrolled identity: a gateway, a connector or a client device.

    The private keys stay on the device; we keep its public WireGuard key, the
    certificate we issued for its CSR and a digest of its bearer credential.
    """

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # gateway | connector | client | segment
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | revoked
    credential_digest: Mapped[str] = mapped_column(String(64), unique=True)
    wg_public_key: Mapped[str] = mapped_column(String(44), unique=True)
    cert_serial: Mapped[str] = mapped_column(String(40))
    cert_pem: Mapped[str] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    address: Mapped[str | None] = mapped_column(String(45), unique=True)
    local_networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    session_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    # the device's latest data-plane report (tunnel peers, handshakes, bytes, version)
    # Deferred: only the device listing reads it (as text, parsed defensively), so
    # a report nobody can parse never breaks sign-in, snapshots or revocation.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None, deferred=True)


class Connector(Base):
    __tablename__ = "connectors"
    __table_args__ = (Index("ix_connectors_slot", "slot", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    location: Mapped[str] = mapped_column(String(100), default="")
    bandwidth_class: Mapped[str] = mapped_column(String(16), default="50mbps")
    owner: Mapped[str] = mapped_column(String(100), default="")
    connector_group_id: Mapped[int] = mapped_column(ForeignKey("connector_groups.id", ondelete="RESTRICT"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="RESTRICT"))
    # no new flows (an upgrade ahead); its established flows go on
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    # in an active-active group: 1..255, unique (the gateway's mark and port per connector)
    slot: Mapped[int | None]
    created_at: Mapped[datetime]
    device: Mapped[Device] = relationship(lazy="joined")


class Gateway(Base):
    __tablename__ = "gateways"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    public_endpoint: Mapped[str] = mapped_column(String(255))
    port_first: Mapped[int] = mapped_column(default=51820)
    port_last: Mapped[int] = mapped_column(default=53000)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    device: Mapped[Device | None] = relationship(lazy="joined")


class Application(Base):
    __tablename__ = "applications"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    connector_group_id: Mapped[int] = mapped_column(ForeignKey("connector_groups.id", ondelete="RESTRICT"))
    # [{"prefix": "10.1.0.10/32", "protocol": "tcp", "ports": ["80", "8000-8080"]}]
    destinations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    require_mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    # {"days": [0..6], "start": "HH:MM", "end": "HH:MM", "tz": "UTC"} or None
    time_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    groups: Mapped[list[Group]] = relationship(secondary=policy_groups, lazy="selectin")
    applications: Mapped[list[Application]] = relationship(secondary=policy_applications, lazy="selectin")


class AddressPoolRow(Base):
    """Client address blocks: the first is the default, the rest alternates."""

    __tablename__ = "address_pools"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    blocks: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class ProvisioningKey(Base):
    __tablename__ = "provisioning_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(255), default="")
    connector_group_id: Mapped[int | None] = mapped_column(
        ForeignKey("connector_groups.id", ondelete="CASCADE")
    )
    gateway_id: Mapped[int | None] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    segment_server_id: Mapped[int | None] = mapped_column(
        ForeignKey("segment_servers.id", ondelete="CASCADE"), default=None
    )
    max_uses: Mapped[int] = mapped_column(default=1)
    uses: Mapped[int] = mapped_column(default=0)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime]


class SegmentServer(Base):
    """A segment server: it manages assets over SSH and enrolls like a gateway (its own keys)."""

    __tablename__ = "segment_servers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    device: Mapped[Device | None] = relationship(lazy="joined")


class SegmentAssetRow(Base):
    """A host a segment server manages: where it is, its pinned host key, its
    mode and what the server last reported about it."""

    __tablename__ = "segment_assets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    address: Mapped[str] = mapped_column(String(45))
    ssh_port: Mapped[int] = mapped_column(default=22)
    # linux: ssh_port/ssh_user are sshd's; windows: the WinRM listener's port and account
    ssh_user: Mapped[str] = mapped_column(String(32), default="zerogate-segment")
    os: Mapped[str] = mapped_column(String(8), default="linux", server_default="linux")
    server_id: Mapped[int] = mapped_column(ForeignKey("segment_servers.id", ondelete="RESTRICT"))
    source: Mapped[str] = mapped_column(String(16), default="static")  # static | directory
    directory_dn: Mapped[str | None] = mapped_column(String(1024), default=None)
    left_directory: Mapped[bool] = mapped_column(Boolean, default=False)
    host_key: Mapped[str | None] = mapped_column(Text, default=None)  # pinned
    observed_host_key: Mapped[str | None] = mapped_column(Text, default=None)
    mode: Mapped[str] = mapped_column(String(24), default="monitored")
    rules_revision: Mapped[int] = mapped_column(default=1)
    learning_started_at: Mapped[datetime | None] = mapped_column(default=None)
    learning_until: Mapped[datetime | None] = mapped_column(default=None)
    state: Mapped[str] = mapped_column(String(24), default="new")
    detail: Mapped[str] = mapped_column(String(1000), default="")
    reported_at: Mapped[datetime | None] = mapped_column(default=None)
    enforced_revision: Mapped[int | None] = mapped_column(default=None)
    preflight: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    ssh_ports: Mapped[list[int]] = mapped_column(JSON, default=list)
    flows_refused: Mapped[int] = mapped_column(default=0)  # new flows past the per-asset limit
    created_at: Mapped[datetime]


class SegmentFlowRow(Base):
    """One learned flow of an asset (``process`` "" when unknown: one key per flow)."""

    __tablename__ = "segment_flows"
    __table_args__ = (UniqueConstraint("asset_id", "direction", "protocol", "port", "peer", "process"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("segment_assets.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str] = mapped_column(String(3))
    port: Mapped[int]
    peer: Mapped[str] = mapped_column(String(45))
    process: Mapped[str] = mapped_column(String(64), default="")
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    count: Mapped[int] = mapped_column(default=1)


class SegmentRuleRow(Base):
    """A rule of an asset: proposed from its flows or written by an admin, then
    approved or rejected. ``sources`` as shown (group names and prefixes),
    ``networks`` what they resolved to when the rule was proposed or decided."""

    __tablename__ = "segment_rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("segment_assets.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(10), default="proposed")  # proposed | approved | rejected
    action: Mapped[str] = mapped_column(String(6), default="accept")  # accept | drop
    protocol: Mapped[str] = mapped_column(String(3))
    port_first: Mapped[int]
    port_last: Mapped[int]
    sources: Mapped[list[str]] = mapped_column(JSON)
    networks: Mapped[list[str]] = mapped_column(JSON)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    decided_by: Mapped[str] = mapped_column(String(100), default="")
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class SegmentJumpHost(Base):
    """A network SSH may come from besides the segment server (deployment-wide)."""

    __tablename__ = "segment_jump_hosts"
    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


class SegmentJitPort(Base):
    """A port of an asset that users may open for themselves, just in time, with
    password + TOTP: who may ask (user and group names, optionally only from
    ``sources``) and the longest opening they may get (seconds)."""

    __tablename__ = "segment_jit_ports"
    __table_args__ = (UniqueConstraint("asset_id", "protocol", "port"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("segment_assets.id", ondelete="CASCADE"), index=True)
    protocol: Mapped[str] = mapped_column(String(3))
    port: Mapped[int]
    users: Mapped[list[str]] = mapped_column(JSON)
    groups: Mapped[list[str]] = mapped_column(JSON)
    sources: Mapped[list[str]] = mapped_column(JSON)
    max_duration: Mapped[int] = mapped_column(default=3600)
    created_at: Mapped[datetime]


class SegmentJitOpening(Base):
    """One approved just-in-time opening: ``source`` may reach the asset's
    ``protocol``/``port`` until ``expires_at`` unless revoked earlier.
    ``expired_audited`` makes the expiry sweep write its record once."""

    __tablename__ = "segment_jit_openings"
    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("segment_assets.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(45))
    protocol: Mapped[str] = mapped_column(String(3))
    port: Mapped[int]
    duration: Mapped[int]
    requested_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_audited: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A bearer token for an account: a login session or a named API token."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(8))  # session | api
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    account: Mapped[Account] = relationship(lazy="joined")


class AuditRecord(Base):
    """Append-only and hash-chained; database triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("prev_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC of ``hash`` with the audit key kept outside the database (store/anchor.py);
    # NULL for records written before the log was anchored (schema 0003).
    mac: Mapped[str | None] = mapped_column(String(64), default=None)


# Tables kept in their own modules register on Base.metadata when imported; they
# come last because they import Base from here.
from zerogate.store import models_controllers, models_flows, models_history, models_throttle  # noqa: E402, F401

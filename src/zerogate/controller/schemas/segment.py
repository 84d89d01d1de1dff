"""Segment: segment servers, assets, modes, rules, simulation and jump hosts.

Asset names follow the snapshot's pattern (a host name or a directory ``cn``);
rule sources are prefixes or the names of known groups (``clients``,
``site:<connector group>``, ``asset:<asset>``). Every value is checked with a
full match and bounded; messages never quote a refused value.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from zerogate.controller.fields import Cidr, Description, IpAddress, ObjectName, cidr_text, plain_text
from zerogate.controller.schemas.base import Strict
from zerogate.model.snapshot import SSH_USER, WINRM_USER

_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_SSH_USER = re.compile(SSH_USER)
_WINRM_USER = re.compile(WINRM_USER)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_GROUP_SOURCE = re.compile(
    r"clients|site:[A-Za-z0-9][A-Za-z0-9._-]{0,63}|asset:[A-Za-z0-9][A-Za-z0-9._-]{0,252}"
)

MAX_WINDOW_SECONDS = 366 * 86400
MAX_RULE_SOURCES = 256
MAX_JUMP_HOSTS = 64


def _full(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        plain_text(value)
        if not pattern.fullmatch(value):
            raise ValueError(f"is not a valid {what}")
        return value

    return AfterValidator(check)


def _source(value: str) -> str:
    plain_text(value)
    if _GROUP_SOURCE.fullmatch(value):
        return value
    try:
        return cidr_text(value)
    except ValueError:
        raise ValueError(
            "is neither a prefix (10.1.0.0/24, 10.1.0.5/32) nor a known group (clients, site:NAME, asset:NAME)"
        ) from None


AssetNameField = Annotated[
    str, Field(min_length=1, max_length=253), _full(_ASSET_NAME, "asset name (letters, digits, . _ -)")
]
# A POSIX user name (Linux, SSH) or a WinRM account (Windows: user, DOMAIN\\user, user@REALM);
# AssetCreate holds it to the asset's os.
SshUserField = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(plain_text)]
AssetOs = Literal["linux", "windows"]
DEFAULT_PORT = {"linux": 22, "windows": 5986}  # sshd; the WinRM HTTPS listener
Fingerprint = Annotated[
    str,
    Field(min_length=50, max_length=50),
    _full(_FINGERPRINT, "fingerprint: SHA256: and 43 base64 characters, as ssh-keygen -lf prints it"),
]
RuleSource = Annotated[str, Field(min_length=1, max_length=260), AfterValidator(_source)]
Port = Annotated[int, Field(ge=1, le=65535)]


class SegmentServerCreate(Strict):
    name: ObjectName
    description: Description = ""


class SegmentServerUpdate(Strict):
    description: Description | None = None


class SegmentServerOut(BaseModel):
    id: int
    name: str
    description: str
    device_id: int | None
    status: str
    last_seen_at: datetime | None
    assets: int
    created_at: datetime


class AssetCreate(Strict):
    name: AssetNameField
    address: IpAddress
    server: ObjectName
    os: AssetOs = "linux"
    ssh_port: Port | None = Field(default=None, description="Default: 22 (linux), 5986 (windows).")
    ssh_user: SshUserField = Field(
        default="zerogate-segment", description="The SSH login (linux) or the WinRM account (windows)."
    )

    @model_validator(mode="after")
    def _per_os(self) -> AssetCreate:
        if self.os == "windows" and not _WINRM_USER.fullmatch(self.ssh_user):
            raise ValueError("ssh_user is not a WinRM account (user, DOMAIN\\user or user@REALM)")
        if self.os == "linux" and not _SSH_USER.fullmatch(self.ssh_user):
            raise ValueError("ssh_user is not a valid POSIX user name")
        return self

    @property
    def port(self) -> int:
        return DEFAULT_PORT[self.os] if self.ssh_port is None else self.ssh_port


class AssetOut(BaseModel):
    id: int
    name: str
    address: str
    os: AssetOs
    ssh_port: int
    ssh_user: str
    server: str
    source: Literal["static", "directory"]
    directory_dn: str | None
    left_directory: bool
    host_key_fingerprint: str | None = Field(description="The pinned host key (SHA256:...), if any.")
    observed_host_key_fingerprint: str | None = Field(description="The key the host offered last.")
    mode: str
    rules_revision: int
    learning_started_at: datetime | None
    learning_until: datetime | None
    state: str
    detail: str
    reported_at: datetime | None
    enforced_revision: int | None
    preflight: list[dict[str, Any]]
    ssh_ports: list[int]
    flows: int
    flows_refused: int
    rules: dict[str, int] = Field(description="Rules by status: proposed, approved, rejected.")
    created_at: datetime


class TrustRequest(Strict):
    fingerprint: Fingerprint


class ModeRequest(Strict):
    mode: Literal["monitored", "learning", "learning_with_blocks", "protected"]
    window_seconds: int | None = Field(
        default=None, ge=1, le=MAX_WINDOW_SECONDS, description="Learning window (learning modes only)."
    )


class ExtendRequest(Strict):
    seconds: int = Field(ge=1, le=MAX_WINDOW_SECONDS)


class RuleCreate(Strict):
    action: Literal["accept", "drop"] = "accept"
    protocol: Literal["tcp", "udp"]
    port_first: Port
    port_last: Port | None = None
    sources: list[RuleSource] = Field(min_length=1, max_length=MAX_RULE_SOURCES)

    @model_validator(mode="after")
    def _range(self) -> RuleCreate:
        if self.port_last is not None and self.port_last < self.port_first:
            raise ValueError("port_last is below port_first")
        return self


class RuleEdit(Strict):
    port_first: Port | None = None
    port_last: Port | None = None
    sources: list[RuleSource] | None = Field(default=None, min_length=1, max_length=MAX_RULE_SOURCES)


class RuleOut(BaseModel):
    id: int
    asset: str
    status: Literal["proposed", "approved", "rejected"]
    action: Literal["accept", "drop"]
    protocol: str
    port_first: int
    port_last: int
    sources: list[str]
    networks: list[str]
    evidence: dict[str, Any] | None
    decided_by: str
    decided_at: datetime | None
    stale: bool = Field(
        default=False,
        description="Approved, but no learned flow used it in the last window: a proposed deletion.",
    )
    created_at: datetime


class ProposalOut(BaseModel):
    asset: str
    proposed: list[RuleOut]
    warning: str | None


class SimulateRequest(Strict):
    rule_ids: list[int] = Field(
        default_factory=list, max_length=1024, description="Proposed rules to count as approved."
    )
    all_proposed: bool = False


class FlowOut(BaseModel):
    direction: str
    protocol: str
    port: int
    peer: str
    process: str | None
    first_seen: datetime
    last_seen: datetime
    count: int


class SourceVerdictOut(BaseModel):
    peer: str
    allowed: bool
    allowed_flows: list[FlowOut]
    blocked_flows: list[FlowOut]


class SimulationOut(BaseModel):
    asset: str
    rule_ids: list[int]
    sources: list[SourceVerdictOut]
    blocked_sources: int


class JumpHosts(Strict):
    jump_hosts: list[Cidr] = Field(max_length=MAX_JUMP_HOSTS)


class JumpHostsOut(BaseModel):
    jump_hosts: list[str]


class SegmentReportResult(BaseModel):
    updated: int
    ignored: list[int] = Field(
        description="Asset ids this server does not manage: nothing of them was stored."
    )
    created: list[str]
    removed: list[str]
    kept: list[str] = Field(description="Directory assets that left the group but stay (enforcing).")
    flows_refused: int
